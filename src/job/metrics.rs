//! Prometheus metrics served on `/metrics`.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    pub target: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DbLabels {
    pub target: String,
    pub database: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HookLabels {
    pub target: String,
    pub hook: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DrillLabels {
    pub target: String,
    pub kind: String,
    /// `passed` or `failed`.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SyncLabels {
    pub destination: String,
}

type FGauge = Gauge<f64, AtomicU64>;

pub struct Metrics {
    registry: Registry,
    pub last_success: Family<JobLabels, FGauge>,
    pub last_duration: Family<JobLabels, FGauge>,
    pub last_size: Family<JobLabels, Gauge>,
    pub jobs_ok: Family<JobLabels, Counter>,
    pub jobs_failed: Family<JobLabels, Counter>,
    pub db_last_success: Family<DbLabels, FGauge>,
    pub db_size: Family<DbLabels, Gauge>,
    pub db_failures: Family<DbLabels, Counter>,
    pub running: Gauge,
    pub hook_failures: Family<HookLabels, Counter>,
    pub drill_last_success: Family<JobLabels, FGauge>,
    pub drill_last_duration: Family<JobLabels, FGauge>,
    pub drill_last_result: Family<JobLabels, Gauge>,
    pub drills: Family<DrillLabels, Counter>,
    pub sync_last_success: Family<SyncLabels, FGauge>,
    pub sync_last_result: Family<SyncLabels, Gauge>,
    pub notify: crate::notify::Counters,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("pgbackup");
        let m = Metrics {
            last_success: Family::default(),
            last_duration: Family::default(),
            last_size: Family::default(),
            jobs_ok: Family::default(),
            jobs_failed: Family::default(),
            db_last_success: Family::default(),
            db_size: Family::default(),
            db_failures: Family::default(),
            running: Gauge::default(),
            hook_failures: Family::default(),
            drill_last_success: Family::default(),
            drill_last_duration: Family::default(),
            drill_last_result: Family::default(),
            drills: Family::default(),
            sync_last_success: Family::default(),
            sync_last_result: Family::default(),
            notify: Default::default(),
            registry: Registry::default(),
        };
        registry.register(
            "last_success_timestamp_seconds",
            "Unix time of the last successful backup",
            m.last_success.clone(),
        );
        registry.register(
            "last_duration_seconds",
            "Duration of the last backup, successful or not",
            m.last_duration.clone(),
        );
        registry.register(
            "last_size_bytes",
            "Stored bytes of the last successful backup",
            m.last_size.clone(),
        );
        registry.register("backups_succeeded", "Successful backups", m.jobs_ok.clone());
        registry.register("backups_failed", "Failed backups", m.jobs_failed.clone());
        registry.register(
            "database_last_success_timestamp_seconds",
            "Unix time of the last successful dump of a database",
            m.db_last_success.clone(),
        );
        registry.register(
            "database_last_size_bytes",
            "Stored bytes of the last dump of a database",
            m.db_size.clone(),
        );
        registry.register(
            "database_failures",
            "Failed dumps of a database",
            m.db_failures.clone(),
        );
        registry.register("jobs_running", "Backup jobs running now", m.running.clone());
        registry.register(
            "hook_failures",
            "Hooks that failed or timed out (a failed pre_backup hook also fails its backup)",
            m.hook_failures.clone(),
        );
        registry.register(
            "drill_last_success_timestamp_seconds",
            "Unix time of the last restore drill that passed",
            m.drill_last_success.clone(),
        );
        registry.register(
            "drill_last_duration_seconds",
            "Duration of the last restore drill, passed or not",
            m.drill_last_duration.clone(),
        );
        registry.register(
            "drill_last_result",
            "1 when the last restore drill passed, 0 when it failed",
            m.drill_last_result.clone(),
        );
        registry.register("drills", "Restore drills by result", m.drills.clone());
        registry.register(
            "sync_last_success_timestamp_seconds",
            "Unix time of the last scheduled copy restored into a destination",
            m.sync_last_success.clone(),
        );
        registry.register(
            "sync_last_result",
            "1 when the last copy into a destination succeeded (or had nothing new), 0 when it failed",
            m.sync_last_result.clone(),
        );
        registry.register(
            "notifications",
            "Notifications by service, event and result (sent, or failed after its retries)",
            m.notify.notifications.clone(),
        );
        registry.register(
            "pings",
            "Dead-man pings by target, signal (start, success, fail) and result",
            m.notify.pings.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("encode metrics");
        out
    }
}
