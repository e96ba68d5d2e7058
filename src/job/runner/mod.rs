//! Runs backup jobs: at most `PGBACKUP_CONCURRENCY` at once, never two of one target, each
//! within its timeout; a failed scheduled backup is tried again after [`RETRY_DELAYS`];
//! records results for status and metrics. Every job is a task in the runner's own `JoinSet`,
//! which a shutdown drains. The scheduler decides when (pure planning in [`plan`] and
//! [`due`]), the runner how.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::Serialize;
use tokio::sync::{Mutex, RwLock, Semaphore, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::discovery::{SyncDest, Target};
use crate::engine::docker::DockerClient;
use crate::job::backup::{self, BackupError, Ctx};
use crate::job::drill::{self, DrillResult};
use crate::job::hook::{self, HookError, Point};
use crate::job::metrics::{DbLabels, DrillLabels, HookLabels, JobLabels, Metrics, SyncLabels};
use crate::job::sync::{self, SyncResult};
use crate::model::TargetId;
use crate::model::layout::{self, BackupId, Kind};
use crate::model::manifest::Manifest;
use crate::notify::ping::Signal;
use crate::notify::{self, Event, EventKind, Notifier};
use crate::retention::prune;
use crate::store::{SharedStore, catalog};

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    Schedule,
    Startup,
    Manual,
    /// `pgctl run --once`.
    Once,
}

/// How long ago `finished` was, when that is within `window` of `now` (to the second). Pure.
pub fn too_recent(
    finished: DateTime<Utc>,
    now: DateTime<Utc>,
    window: Duration,
) -> Option<Duration> {
    let age = (now - finished).to_std().unwrap_or_default();
    (age < window).then(|| Duration::from_secs(age.as_secs()))
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Trigger::Schedule => "schedule",
            Trigger::Startup => "startup",
            Trigger::Manual => "manual",
            Trigger::Once => "once",
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct JobResult {
    pub target: String,
    pub kind: Kind,
    pub trigger: Trigger,
    pub ok: bool,
    pub backup_id: Option<String>,
    pub databases: Vec<String>,
    pub bytes: u64,
    pub started_at: DateTime<Utc>,
    pub duration_seconds: f64,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct TargetState {
    pub running: Option<Running>,
    pub last: Option<JobResult>,
    pub last_success: Option<JobResult>,
    /// What the last retention run found and kept (young leftovers, open uploads, backups it
    /// could not count), so status shows it between prunes.
    pub storage: Option<StorageNotes>,
    /// Since when a restore drill of this target runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drilling: Option<DateTime<Utc>>,
    /// The last restore drill of each backup kind.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub drills: BTreeMap<Kind, DrillResult>,
}

/// A copy destination's state, for status.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncState {
    /// Since when a copy runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub running: Option<DateTime<Utc>>,
    pub last: Option<SyncResult>,
    /// The backup the destination holds now (the last one copied), so an unchanged source is
    /// not copied again.
    pub copied: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct StorageNotes {
    pub checked_at: DateTime<Utc>,
    pub young_leftovers: usize,
    pub open_uploads: usize,
    pub oldest_kept: Option<DateTime<Utc>>,
    pub unusable: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Running {
    pub kind: Kind,
    pub trigger: Trigger,
    pub started_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(
        "a {kind} backup of {target} ({trigger:?}) is already running since {since}; try again when it ends, or pass --wait"
    )]
    Busy {
        target: String,
        kind: Kind,
        trigger: Trigger,
        since: DateTime<Utc>,
    },
    #[error("a restore drill of {target} is already running since {since}; see `pgctl status`")]
    DrillBusy {
        target: String,
        since: DateTime<Utc>,
    },
    #[error("a copy into {destination} is already running since {since}; see `pgctl status`")]
    SyncBusy {
        destination: String,
        since: DateTime<Utc>,
    },
    #[error("the controller is shutting down; no new backup starts")]
    ShuttingDown,
    /// Not an error: a start-up, `--all` or single-shot run found a committed backup of its
    /// kind younger than the target's `skip_if_newer_than`.
    #[error(
        "skipped: its {kind} backup {backup_id} finished {} ago, within skip_if_newer_than={} (name the target to back it up anyway)",
        humantime::format_duration(*age), humantime::format_duration(*window)
    )]
    Recent {
        target: String,
        kind: Kind,
        backup_id: String,
        age: Duration,
        window: Duration,
    },
    #[error("the backup task failed: {0}")]
    Crashed(String),
}

/// What one attempt of a job does. Behind a port so the runner's own rules (locks, slots,
/// timeouts, retries, shutdown) are tested without Docker; [`Backups`] is the real one.
#[async_trait::async_trait]
pub trait Work: Send + Sync {
    /// Writes backup `id` of `target`.
    async fn backup(&self, target: &Target, id: BackupId) -> Result<Manifest, BackupError>;
    /// Removes what a failed attempt wrote in `dir`, its folder.
    async fn discard(&self, dir: &str);
    /// Runs a hook's `command` in the target's container; its output on success. (Fakes that
    /// have no hooks to run keep this default.)
    async fn hook(
        &self,
        _target: &Target,
        _point: Point,
        _command: &[String],
        _env: &[String],
        _timeout: Duration,
    ) -> Result<String, HookError> {
        Ok(String::new())
    }
    /// Restores `target`'s latest backup of each kind into a throwaway server and compares it
    /// with the backup's facts ([`drill::run`]); stops when `cancel` fires.
    async fn drill(&self, target: &Target, _cancel: &CancellationToken) -> Vec<DrillResult> {
        vec![DrillResult::failed(target, "restore drills need Docker")]
    }
    /// Copies the latest backup of `dest`'s source into it unless it is `last` ([`sync::run`]).
    async fn sync(
        &self,
        dest: &SyncDest,
        targets: &[Target],
        last: Option<&str>,
        _cancel: &CancellationToken,
    ) -> SyncResult {
        let _ = (targets, last);
        SyncResult::failed(dest, "copies need Docker")
    }
}

/// The real work: dumps or base backups from the target through the pipeline into the store.
pub struct Backups {
    pub docker: DockerClient,
    pub store: SharedStore,
    /// For the restores of drills (who a container's role is).
    pub defaults: crate::config::Defaults,
}

#[async_trait::async_trait]
impl Work for Backups {
    async fn backup(&self, target: &Target, id: BackupId) -> Result<Manifest, BackupError> {
        let ctx = Ctx {
            docker: &self.docker,
            store: self.store.as_ref(),
        };
        match id.kind {
            Kind::Logical => backup::logical(&ctx, target, id).await,
            Kind::Physical => backup::physical(&ctx, target, id).await,
        }
    }

    async fn discard(&self, dir: &str) {
        let ctx = Ctx {
            docker: &self.docker,
            store: self.store.as_ref(),
        };
        backup::discard(&ctx, dir).await;
    }

    async fn hook(
        &self,
        target: &Target,
        point: Point,
        command: &[String],
        env: &[String],
        timeout: Duration,
    ) -> Result<String, HookError> {
        hook::run(
            &self.docker,
            &target.container_id,
            point,
            command,
            env,
            timeout,
        )
        .await
    }

    async fn drill(&self, target: &Target, cancel: &CancellationToken) -> Vec<DrillResult> {
        let ctx = drill::Ctx {
            docker: &self.docker,
            store: self.store.as_ref(),
            defaults: &self.defaults,
            cancel,
        };
        drill::run(&ctx, target).await
    }

    async fn sync(
        &self,
        dest: &SyncDest,
        targets: &[Target],
        last: Option<&str>,
        cancel: &CancellationToken,
    ) -> SyncResult {
        let ctx = sync::Ctx {
            docker: &self.docker,
            store: self.store.as_ref(),
            defaults: &self.defaults,
            cancel,
        };
        sync::run(&ctx, dest, targets, last).await
    }
}

pub struct Runner {
    /// For what the controller reports beside jobs (unfinished restores); `None` in tests.
    pub docker: Option<DockerClient>,
    work: Arc<dyn Work>,
    pub store: SharedStore,
    pub tz: Tz,
    pub min_backups: u32,
    slots: Semaphore,
    /// Cancelled on shutdown: running jobs stop, clean up and report.
    cancel: CancellationToken,
    active: std::sync::atomic::AtomicUsize,
    /// Every job started through [`Runner::submit`]: owned here, drained by a shutdown.
    jobs: std::sync::Mutex<JoinSet<()>>,
    locks: Mutex<HashMap<TargetId, Arc<Mutex<()>>>>,
    /// Drills and copies running (`drill <target>`, `sync <destination>`): never two of one.
    exclusive: std::sync::Mutex<std::collections::HashSet<String>>,
    pub state: RwLock<BTreeMap<String, TargetState>>,
    /// Copy destinations by name.
    pub syncs: RwLock<BTreeMap<String, SyncState>>,
    pub metrics: Metrics,
    /// Notifications and pings about every job.
    pub notifier: Notifier,
}

impl Runner {
    pub fn new(
        docker: DockerClient,
        store: SharedStore,
        defaults: crate::config::Defaults,
        concurrency: usize,
        min_backups: u32,
        notify: notify::Settings,
    ) -> Runner {
        let tz = defaults.timezone;
        let work = Arc::new(Backups {
            docker: docker.clone(),
            store: store.clone(),
            defaults,
        });
        let mut r = Runner::build(work, store, tz, concurrency, min_backups, notify);
        r.docker = Some(docker);
        r
    }

    /// A runner doing `work` (tests use a fake).
    pub fn with_work(
        work: Arc<dyn Work>,
        store: SharedStore,
        tz: Tz,
        concurrency: usize,
        min_backups: u32,
    ) -> Runner {
        Runner::build(
            work,
            store,
            tz,
            concurrency,
            min_backups,
            notify::Settings::default(),
        )
    }

    fn build(
        work: Arc<dyn Work>,
        store: SharedStore,
        tz: Tz,
        concurrency: usize,
        min_backups: u32,
        notify: notify::Settings,
    ) -> Runner {
        let metrics = Metrics::default();
        Runner {
            notifier: Notifier::new(notify, metrics.notify.clone()),
            docker: None,
            work,
            store,
            tz,
            min_backups,
            slots: Semaphore::new(concurrency),
            cancel: CancellationToken::new(),
            active: Default::default(),
            jobs: std::sync::Mutex::new(JoinSet::new()),
            locks: Mutex::default(),
            exclusive: Default::default(),
            state: RwLock::default(),
            syncs: RwLock::default(),
            metrics,
        }
    }

    async fn lock_for(&self, t: &TargetId) -> Arc<Mutex<()>> {
        self.locks
            .lock()
            .await
            .entry(t.clone())
            .or_default()
            .clone()
    }

    /// Starts a job as a task the runner owns (a client that goes away does not cut it off
    /// half-way); its result arrives on the returned channel.
    pub fn submit(
        self: &Arc<Self>,
        target: Target,
        kind: Kind,
        trigger: Trigger,
        wait: bool,
    ) -> oneshot::Receiver<Result<JobResult, RunError>> {
        let runner = self.clone();
        self.spawn_job(async move { runner.run(&target, kind, trigger, wait).await })
    }

    /// [`Runner::submit`] for runs that cover every target (start-up, `--all`, single shot):
    /// a target whose newest committed backup of `kind` is younger than its
    /// `skip_if_newer_than` is not backed up ([`RunError::Recent`], logged).
    pub fn submit_unless_recent(
        self: &Arc<Self>,
        target: Target,
        kind: Kind,
        trigger: Trigger,
        wait: bool,
    ) -> oneshot::Receiver<Result<JobResult, RunError>> {
        let runner = self.clone();
        self.spawn_job(async move {
            if let Some(recent) = runner.recent(&target, kind).await {
                tracing::info!(target_id = %target.target, %trigger, "Backup {recent}");
                return Err(recent);
            }
            runner.run(&target, kind, trigger, wait).await
        })
    }

    /// The newest committed backup of `kind` when it is younger than the target's window; a
    /// listing that fails does not skip anything (the backup runs).
    async fn recent(&self, target: &Target, kind: Kind) -> Option<RunError> {
        let spec = target.settings()?;
        let window = spec.skip_if_newer_than?;
        let dir = layout::target_dir(self.store.prefix(), &spec.prefix);
        let m = match catalog::latest(
            self.store.as_ref(),
            &dir,
            kind,
            Some(&target.target.to_string()),
        )
        .await
        {
            Ok(m) => m?,
            Err(e) => {
                tracing::warn!(target_id = %target.target, error = %e,
                    "Cannot tell how old the newest backup is; backing up.");
                return None;
            }
        };
        let age = too_recent(m.finished_at, Utc::now(), window)?;
        Some(RunError::Recent {
            target: target.target.to_string(),
            kind,
            backup_id: m.backup_id.to_string(),
            age,
            window,
        })
    }

    /// Starts a restore drill as a task the runner owns; its result arrives on the channel.
    pub fn submit_drill(
        self: &Arc<Self>,
        target: Target,
        trigger: Trigger,
    ) -> oneshot::Receiver<Result<Vec<DrillResult>, RunError>> {
        let runner = self.clone();
        self.spawn_job(async move { runner.drill(&target, trigger).await })
    }

    /// Runs `job` as a task in the runner's job set (drained on shutdown); its result arrives
    /// on the returned channel.
    fn spawn_job<T: Send + 'static>(
        &self,
        job: impl Future<Output = T> + Send + 'static,
    ) -> oneshot::Receiver<T> {
        let (tx, rx) = oneshot::channel();
        let mut jobs = self.jobs.lock().expect("job set lock");
        // Finished jobs are reaped here, so the set holds only running ones.
        while jobs.try_join_next().is_some() {}
        jobs.spawn(async move {
            let _ = tx.send(job.await);
        });
        rx
    }

    /// Claims `key` (a drill or copy) until the claim drops; `None` while it is claimed.
    fn claim(&self, key: String) -> Option<Claim<'_>> {
        // The guard is gone before a Claim exists: a Claim dropped at once (when `key` is
        // taken) would otherwise wait for the lock its own statement holds.
        let fresh = self
            .exclusive
            .lock()
            .expect("claims lock")
            .insert(key.clone());
        fresh.then(|| Claim {
            set: &self.exclusive,
            key,
        })
    }

    /// Runs a restore drill of `target` now, in one of the job slots backups use (a drill
    /// restores a whole backup: it counts against `PGBACKUP_CONCURRENCY`). A drill never
    /// touches the source, so it does not wait for the target's backups; two drills of one
    /// target never run at once.
    pub async fn drill(
        &self,
        target: &Target,
        trigger: Trigger,
    ) -> Result<Vec<DrillResult>, RunError> {
        if self.cancel.is_cancelled() {
            return Err(RunError::ShuttingDown);
        }
        let _active = Active::enter(&self.active);
        let key = target.target.to_string();
        let Some(claim) = self.claim(format!("drill {key}")) else {
            let since = self
                .state
                .read()
                .await
                .get(&key)
                .and_then(|s| s.drilling)
                .unwrap_or_else(Utc::now);
            return Err(RunError::DrillBusy { target: key, since });
        };
        let permit = self.slots.acquire().await.expect("semaphore open");
        let started_at = Utc::now();
        self.state
            .write()
            .await
            .entry(key.clone())
            .or_default()
            .drilling = Some(started_at);
        tracing::info!(target_id = %key, trigger = %trigger, "Restore drill started.");
        let mut results = self.work.drill(target, &self.cancel).await;
        drop(permit);
        drop(claim);
        let mut st = self.state.write().await;
        let entry = st.entry(key).or_default();
        entry.drilling = None;
        for r in results.iter_mut() {
            r.trigger = trigger.to_string();
            self.record_drill(r);
            entry.drills.insert(r.kind, r.clone());
        }
        Ok(results)
    }

    /// Starts a scheduled or manual copy into `dest` as a task the runner owns.
    pub fn submit_sync(
        self: &Arc<Self>,
        dest: SyncDest,
        targets: Vec<Target>,
        trigger: Trigger,
    ) -> oneshot::Receiver<Result<SyncResult, RunError>> {
        let runner = self.clone();
        self.spawn_job(async move { runner.sync(&dest, &targets, trigger).await })
    }

    /// Runs a copy into `dest` now, in a job slot; never two into one destination at once.
    pub async fn sync(
        &self,
        dest: &SyncDest,
        targets: &[Target],
        trigger: Trigger,
    ) -> Result<SyncResult, RunError> {
        if self.cancel.is_cancelled() {
            return Err(RunError::ShuttingDown);
        }
        let _active = Active::enter(&self.active);
        let key = dest.destination.to_string();
        let Some(claim) = self.claim(format!("sync {key}")) else {
            let since = self
                .syncs
                .read()
                .await
                .get(&key)
                .and_then(|s| s.running)
                .unwrap_or_else(Utc::now);
            return Err(RunError::SyncBusy {
                destination: key,
                since,
            });
        };
        let permit = self.slots.acquire().await.expect("semaphore open");
        let last = {
            let mut st = self.syncs.write().await;
            let e = st.entry(key.clone()).or_default();
            e.running = Some(Utc::now());
            e.copied.clone()
        };
        let mut r = self
            .work
            .sync(dest, targets, last.as_deref(), &self.cancel)
            .await;
        drop(permit);
        drop(claim);
        r.trigger = trigger.to_string();
        self.record_sync(&r);
        let mut st = self.syncs.write().await;
        let e = st.entry(key).or_default();
        e.running = None;
        if r.ok {
            e.copied = r.backup_id.clone();
        }
        e.last = Some(r.clone());
        Ok(r)
    }

    /// A copy's outcome in metrics, the log and notifications (a skipped copy is logged only).
    fn record_sync(&self, r: &SyncResult) {
        let d = SyncLabels {
            destination: r.destination.clone(),
        };
        self.metrics
            .sync_last_result
            .get_or_create(&d)
            .set(i64::from(r.ok));
        let backup = r.backup_id.as_deref().unwrap_or("");
        if r.skipped {
            tracing::info!(destination = %r.destination, from = %r.from, backup_id = backup,
                "Copy skipped: the source has no committed backup newer than the last one copied.");
            return;
        }
        if r.ok {
            self.metrics
                .sync_last_success
                .get_or_create(&d)
                .set(Utc::now().timestamp() as f64);
            tracing::info!(destination = %r.destination, from = %r.from, backup_id = backup,
                databases = r.databases.len(), duration_s = format!("{:.1}", r.duration_seconds),
                result = "ok", "Copy restored.");
        } else {
            tracing::error!(destination = %r.destination, from = %r.from, backup_id = backup,
                duration_s = format!("{:.1}", r.duration_seconds), result = "failed",
                "Copy failed: {}", r.error.as_deref().unwrap_or("(no reason)"));
        }
        self.notifier.notify(Event {
            event: if r.ok {
                EventKind::SyncSucceeded
            } else {
                EventKind::SyncFailed
            },
            target: r.destination.clone(),
            kind: Kind::Logical,
            trigger: r.trigger.clone(),
            backup_id: r.backup_id.clone(),
            databases: r.databases.clone(),
            bytes: 0,
            duration_seconds: r.duration_seconds,
            error: r.error.clone(),
            deleted: vec![],
            time: Utc::now(),
        });
    }

    /// A drill's outcome in metrics, the log and notifications.
    fn record_drill(&self, r: &DrillResult) {
        let t = JobLabels {
            target: r.target.clone(),
            kind: r.kind.to_string(),
        };
        self.metrics
            .drill_last_duration
            .get_or_create(&t)
            .set(r.duration_seconds);
        self.metrics
            .drill_last_result
            .get_or_create(&t)
            .set(i64::from(r.ok));
        self.metrics
            .drills
            .get_or_create(&DrillLabels {
                target: r.target.clone(),
                kind: r.kind.to_string(),
                result: if r.ok { "passed" } else { "failed" }.into(),
            })
            .inc();
        if r.ok {
            self.metrics
                .drill_last_success
                .get_or_create(&t)
                .set(Utc::now().timestamp() as f64);
            tracing::info!(target_id = %r.target, kind = %r.kind, backup_id = r.backup_id.as_deref().unwrap_or(""),
                databases = r.databases.len(), tables = r.tables_checked, rows = r.rows_checked,
                duration_s = format!("{:.1}", r.duration_seconds), result = "passed", "Restore drill passed.");
        } else {
            tracing::error!(target_id = %r.target, kind = %r.kind, backup_id = r.backup_id.as_deref().unwrap_or(""),
                duration_s = format!("{:.1}", r.duration_seconds), result = "failed",
                "Restore drill failed: {}", r.error.as_deref().unwrap_or("(no reason)"));
        }
        self.notifier.notify(Event {
            event: if r.ok {
                EventKind::DrillSucceeded
            } else {
                EventKind::DrillFailed
            },
            target: r.target.clone(),
            kind: r.kind,
            trigger: r.trigger.clone(),
            backup_id: r.backup_id.clone(),
            databases: r.databases.clone(),
            bytes: 0,
            duration_seconds: r.duration_seconds,
            error: r.error.clone(),
            deleted: vec![],
            time: Utc::now(),
        });
    }

    /// Cancels every running job and waits (up to `grace`) until each has cleaned up and
    /// recorded its failure; a job still running then is aborted (dropping it aborts its
    /// uploads). New jobs are refused from now on. Returns how many had to be aborted.
    pub async fn shutdown(&self, grace: Duration) -> usize {
        self.cancel.cancel();
        let mut jobs = std::mem::take(&mut *self.jobs.lock().expect("job set lock"));
        let drained =
            tokio::time::timeout(grace, async { while jobs.join_next().await.is_some() {} }).await;
        let left = if drained.is_ok() { 0 } else { jobs.len() };
        jobs.shutdown().await;
        // Jobs run directly (`run` outside `submit`) are counted too.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while self.active.load(std::sync::atomic::Ordering::SeqCst) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        left
    }

    /// Runs one job now. With `wait`, waits for a running job of the same target to end;
    /// without, refuses with [`RunError::Busy`].
    pub async fn run(
        &self,
        target: &Target,
        kind: Kind,
        trigger: Trigger,
        wait: bool,
    ) -> Result<JobResult, RunError> {
        if self.cancel.is_cancelled() {
            return Err(RunError::ShuttingDown);
        }
        let _active = Active::enter(&self.active);
        self.run_counted(target, kind, trigger, wait).await
    }

    async fn run_counted(
        &self,
        target: &Target,
        kind: Kind,
        trigger: Trigger,
        wait: bool,
    ) -> Result<JobResult, RunError> {
        let lock = self.lock_for(&target.target).await;
        let _guard = match lock.clone().try_lock_owned() {
            Ok(g) => g,
            Err(_) if wait => lock.lock_owned().await,
            Err(_) => {
                let st = self.state.read().await;
                let r = st
                    .get(&target.target.to_string())
                    .and_then(|s| s.running.clone());
                return Err(RunError::Busy {
                    target: target.target.to_string(),
                    kind: r.as_ref().map(|r| r.kind).unwrap_or(kind),
                    trigger: r.as_ref().map(|r| r.trigger).unwrap_or(Trigger::Schedule),
                    since: r.map(|r| r.started_at).unwrap_or_else(Utc::now),
                });
            }
        };
        let permit = self.slots.acquire().await.expect("semaphore open");
        let started_at = Utc::now();
        let key = target.target.to_string();
        self.state
            .write()
            .await
            .entry(key.clone())
            .or_default()
            .running = Some(Running {
            kind,
            trigger,
            started_at,
        });
        self.metrics.running.inc();
        let clock = Instant::now();
        tracing::info!(target_id = %key, kind = %kind, trigger = %trigger, container = %target.container, "Backup started.");
        let ping_url = self
            .notifier
            .ping_url(target.settings().and_then(|s| s.ping_url.as_ref()))
            .cloned();
        let start_ping = self
            .notifier
            .ping(&key, ping_url.as_ref(), Signal::Start, None);
        let timeout = target
            .settings()
            .map(|s| s.timeout)
            .unwrap_or(Duration::from_secs(7200));
        let hooks = target
            .settings()
            .map(|s| s.hooks.clone())
            .unwrap_or_default();
        let outcome = match self.pre_hook(target, kind, &hooks).await {
            Err(e) => {
                drop(permit);
                Err(e)
            }
            Ok(()) => {
                self.with_retries(target, kind, trigger, timeout, permit)
                    .await
            }
        };
        let duration = clock.elapsed().as_secs_f64();
        self.metrics.running.dec();
        let result = self.record(target, kind, trigger, started_at, duration, outcome);
        self.post_hook(target, &hooks, &result).await;
        let signal = match &result.error {
            None => Signal::Success {
                duration_ms: (duration * 1000.0) as u64,
            },
            Some(e) => Signal::Fail { error: e.clone() },
        };
        self.notifier
            .ping(&key, ping_url.as_ref(), signal, start_ping);
        self.notifier.notify(event_of(&result));
        if result.ok && trigger != Trigger::Manual {
            // Retention runs after every scheduled backup, still under the target's lock.
            self.prune(target, kind, trigger).await;
        }
        let mut st = self.state.write().await;
        let entry = st.entry(key).or_default();
        entry.running = None;
        entry.last = Some(result.clone());
        if result.ok {
            entry.last_success = Some(result.clone());
        }
        Ok(result)
    }

    /// Attempts up to the retry policy allows ([`RETRY_DELAYS`], [`retryable`]); the slot is
    /// given back while waiting.
    async fn with_retries(
        &self,
        target: &Target,
        kind: Kind,
        trigger: Trigger,
        timeout: Duration,
        permit: tokio::sync::SemaphorePermit<'_>,
    ) -> Result<Manifest, BackupError> {
        let mut permit = Some(permit);
        let retries = match trigger {
            Trigger::Manual | Trigger::Once => 0,
            Trigger::Schedule | Trigger::Startup => RETRY_DELAYS.len(),
        };
        let mut attempt = 0;
        loop {
            let r = self.attempt(target, kind, timeout).await;
            drop(permit.take());
            match r {
                Err(e)
                    if attempt < retries
                        && retryable(&e)
                        && !self.cancel.is_cancelled()
                        && !self.next_run_comes_first(target, kind, RETRY_DELAYS[attempt]) =>
                {
                    let delay = RETRY_DELAYS[attempt];
                    attempt += 1;
                    tracing::warn!(target_id = %target.target, kind = %kind, attempt, retry_in = %humantime::format_duration(delay),
                        "Backup attempt failed; trying again: {e}");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.cancel.cancelled() => break Err(e),
                    }
                    permit = Some(self.slots.acquire().await.expect("semaphore open"));
                }
                r => break r,
            }
        }
    }

    /// Records a job's outcome in metrics and the log, as the result status shows.
    fn record(
        &self,
        target: &Target,
        kind: Kind,
        trigger: Trigger,
        started_at: DateTime<Utc>,
        duration: f64,
        outcome: Result<Manifest, BackupError>,
    ) -> JobResult {
        let key = target.target.to_string();
        let labels = JobLabels {
            target: key.clone(),
            kind: kind.to_string(),
        };
        self.metrics
            .last_duration
            .get_or_create(&labels)
            .set(duration);
        match outcome {
            Ok(m) => {
                self.metrics.jobs_ok.get_or_create(&labels).inc();
                self.metrics
                    .last_success
                    .get_or_create(&labels)
                    .set(Utc::now().timestamp() as f64);
                self.metrics
                    .last_size
                    .get_or_create(&labels)
                    .set(m.size() as i64);
                for o in &m.objects {
                    let db = DbLabels {
                        target: key.clone(),
                        database: o.database.clone().unwrap_or_else(|| "(globals)".into()),
                    };
                    self.metrics.db_size.get_or_create(&db).set(o.size as i64);
                    self.metrics
                        .db_last_success
                        .get_or_create(&db)
                        .set(Utc::now().timestamp() as f64);
                }
                tracing::info!(target_id = %key, kind = %kind, backup_id = %m.backup_id, databases = m.databases.len(),
                    bytes = m.size(), raw_bytes = m.raw_size(), duration_s = format!("{duration:.1}"), result = "ok",
                    "Backup committed.");
                JobResult {
                    target: key.clone(),
                    kind,
                    trigger,
                    ok: true,
                    backup_id: Some(m.backup_id.to_string()),
                    databases: m.databases.clone(),
                    bytes: m.size(),
                    started_at,
                    duration_seconds: duration,
                    error: None,
                }
            }
            Err(e) => {
                self.metrics.jobs_failed.get_or_create(&labels).inc();
                self.metrics
                    .db_failures
                    .get_or_create(&DbLabels {
                        target: key.clone(),
                        database: e.database().unwrap_or("").to_string(),
                    })
                    .inc();
                tracing::error!(target_id = %key, kind = %kind, database = e.database().unwrap_or(""),
                    duration_s = format!("{duration:.1}"), result = "failed", "Backup failed: {e}");
                JobResult {
                    target: key.clone(),
                    kind,
                    trigger,
                    ok: false,
                    backup_id: None,
                    databases: vec![],
                    bytes: 0,
                    started_at,
                    duration_seconds: duration,
                    error: Some(e.to_string()),
                }
            }
        }
    }
}

/// A drill or copy claimed in [`Runner::claim`]; released when dropped, however its job ends.
struct Claim<'a> {
    set: &'a std::sync::Mutex<std::collections::HashSet<String>>,
    key: String,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.set.lock().expect("claims lock").remove(&self.key);
    }
}

/// Counts a running job for [`Runner::shutdown`], however its future ends.
struct Active<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Active<'a> {
    fn enter(n: &'a std::sync::atomic::AtomicUsize) -> Active<'a> {
        n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Active(n)
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Waits before the second and third attempt of a failed scheduled (or start-up) backup: a
/// restarting database, a network blip or a busy endpoint usually passes within minutes, and a
/// daily schedule should not wait a day for the next try. Manual backups are not retried (the
/// person asking sees the error at once); nor is a job whose target's schedule runs again
/// before the retry would (that run is the retry).
pub const RETRY_DELAYS: [Duration; 2] = [Duration::from_secs(60), Duration::from_secs(300)];

/// Whether another attempt may succeed: failures of the dump, the database connection, the
/// upload or a container that is not running (yet). Not: invalid labels, a folder another
/// target owns, a timeout, a refusal, a shutdown — trying again would fail the same way. Pure.
pub fn retryable(e: &BackupError) -> bool {
    matches!(
        e,
        BackupError::Dump { .. }
            | BackupError::Pg(_)
            | BackupError::Upload { .. }
            | BackupError::NotRunning(_)
    )
}

impl Runner {
    /// True when the target's own schedule runs again within `delay`: that run is the retry
    /// (a seconds-level schedule must not be held up by a backoff).
    fn next_run_comes_first(&self, target: &Target, kind: Kind, delay: Duration) -> bool {
        let Some(spec) = target.settings() else {
            return false;
        };
        let schedule = match kind {
            Kind::Logical => &spec.schedule_parsed,
            Kind::Physical => &spec.physical_schedule_parsed,
        };
        let now = Utc::now();
        schedule
            .next_after(now, self.tz)
            .is_some_and(|next| next <= now + chrono::Duration::from_std(delay).unwrap_or_default())
    }

    /// One attempt of a job under a fresh backup id. Whatever ends it — its error, its
    /// timeout, a shutdown — the folder it was writing is removed before it returns: nothing
    /// is left behind.
    async fn attempt(
        &self,
        target: &Target,
        kind: Kind,
        timeout: Duration,
    ) -> Result<Manifest, BackupError> {
        let id = BackupId::unique(Utc::now(), kind);
        let outcome = tokio::select! {
            r = self.work.backup(target, id) => r,
            _ = tokio::time::sleep(timeout) => Err(timed_out(timeout)),
            _ = self.cancel.cancelled() => Err(BackupError::Refused(
                "the controller is shutting down (SIGTERM): the backup was cancelled and nothing was committed".into(),
            )),
        };
        if let (Err(e), Some(spec)) = (&outcome, target.settings())
            && !matches!(e, BackupError::FolderTaken(_))
        {
            self.work
                .discard(&layout::backup_dir(self.store.prefix(), &spec.prefix, &id))
                .await;
        }
        outcome
    }
}

/// The notification about a job's result.
fn event_of(r: &JobResult) -> Event {
    Event {
        event: if r.ok {
            EventKind::BackupSucceeded
        } else {
            EventKind::BackupFailed
        },
        target: r.target.clone(),
        kind: r.kind,
        trigger: r.trigger.to_string(),
        backup_id: r.backup_id.clone(),
        databases: r.databases.clone(),
        bytes: r.bytes,
        duration_seconds: r.duration_seconds,
        error: r.error.clone(),
        deleted: vec![],
        time: Utc::now(),
    }
}

impl Runner {
    /// The pre-backup hook, if any: a failure (or a shutdown meanwhile) fails the job before
    /// anything is written.
    async fn pre_hook(
        &self,
        target: &Target,
        kind: Kind,
        hooks: &crate::config::labels::Hooks,
    ) -> Result<(), BackupError> {
        let Some(cmd) = &hooks.pre_backup else {
            return Ok(());
        };
        let env = hook_env(target, kind, Point::PreBackup, None);
        let r = tokio::select! {
            r = self.work.hook(target, Point::PreBackup, cmd, &env, hooks.timeout) => r,
            _ = self.cancel.cancelled() => return Err(BackupError::Refused(
                "the controller is shutting down (SIGTERM) during the pre_backup hook: no backup was taken".into(),
            )),
        };
        match r {
            Ok(output) => {
                tracing::info!(target_id = %target.target, hook = "pre_backup", output = %output, "Hook ran.");
                Ok(())
            }
            Err(e) => {
                self.hook_failed(target, Point::PreBackup);
                Err(e.into())
            }
        }
    }

    /// The post-backup hook, if any, told the outcome through its environment. Its failure is
    /// logged and counted; the backup's own result stands.
    async fn post_hook(
        &self,
        target: &Target,
        hooks: &crate::config::labels::Hooks,
        result: &JobResult,
    ) {
        let Some(cmd) = &hooks.post_backup else {
            return;
        };
        let env = hook_env(target, result.kind, Point::PostBackup, Some(result));
        match self
            .work
            .hook(target, Point::PostBackup, cmd, &env, hooks.timeout)
            .await
        {
            Ok(output) => {
                tracing::info!(target_id = %target.target, hook = "post_backup", output = %output, "Hook ran.")
            }
            Err(e) => {
                self.hook_failed(target, Point::PostBackup);
                tracing::warn!(target_id = %target.target, hook = "post_backup", "Hook failed (the backup's result stands): {e}");
            }
        }
    }

    fn hook_failed(&self, target: &Target, point: Point) {
        self.metrics
            .hook_failures
            .get_or_create(&HookLabels {
                target: target.target.to_string(),
                hook: point.name().to_string(),
            })
            .inc();
    }
}

/// What a hook is told (`NAME=value`): the target, the kind, which hook; a post-backup hook
/// also the outcome. Pure.
pub fn hook_env(
    target: &Target,
    kind: Kind,
    point: Point,
    result: Option<&JobResult>,
) -> Vec<String> {
    let mut env = vec![
        format!("PGBACKUP_TARGET={}", target.target),
        format!("PGBACKUP_KIND={kind}"),
        format!("PGBACKUP_HOOK={}", point.name()),
    ];
    if let Some(r) = result {
        env.push(format!(
            "PGBACKUP_RESULT={}",
            if r.ok { "ok" } else { "failed" }
        ));
        env.push(format!(
            "PGBACKUP_BACKUP_ID={}",
            r.backup_id.as_deref().unwrap_or("")
        ));
        env.push(format!("PGBACKUP_BYTES={}", r.bytes));
        env.push(format!(
            "PGBACKUP_DURATION_SECONDS={:.1}",
            r.duration_seconds
        ));
        env.push(format!(
            "PGBACKUP_ERROR={}",
            r.error.as_deref().unwrap_or("")
        ));
    }
    env
}

fn timed_out(timeout: Duration) -> BackupError {
    BackupError::Refused(format!(
        "the backup took longer than its timeout of {} (pgbackup.timeout) and was aborted",
        humantime::format_duration(timeout)
    ))
}

impl Runner {
    async fn prune(&self, target: &Target, kind: Kind, trigger: Trigger) {
        let Some(scope) = prune::scope_of(target, self.store.prefix()) else {
            return;
        };
        let result = async {
            let plan = prune::plan(
                self.store.as_ref(),
                &scope,
                self.min_backups,
                self.tz,
                Utc::now(),
            )
            .await?;
            let notes = StorageNotes {
                checked_at: Utc::now(),
                young_leftovers: plan.young_leftovers.len(),
                open_uploads: plan.open_uploads.len(),
                oldest_kept: plan
                    .young_leftovers
                    .iter()
                    .filter_map(|l| l.last_modified)
                    .chain(plan.open_uploads.iter().filter_map(|u| u.initiated))
                    .min(),
                unusable: plan.unusable.len(),
            };
            self.state
                .write()
                .await
                .entry(scope.target.clone())
                .or_default()
                .storage = Some(notes);
            prune::execute(self.store.as_ref(), &plan).await
        }
        .await;
        match result {
            Ok(d) => {
                tracing::info!(target_id = %scope.target, policy = %scope.policy,
                    backups_deleted = d.backups_deleted, leftovers_deleted = d.leftovers_deleted,
                    uploads_aborted = d.uploads_aborted, "Retention applied.");
                if !d.deleted.is_empty() {
                    self.notifier.notify(Event {
                        event: EventKind::RetentionDeleted,
                        target: scope.target.clone(),
                        kind,
                        trigger: trigger.to_string(),
                        backup_id: None,
                        databases: vec![],
                        bytes: 0,
                        duration_seconds: 0.0,
                        error: None,
                        deleted: d.deleted,
                        time: Utc::now(),
                    });
                }
            }
            Err(e) => {
                tracing::warn!(target_id = %scope.target, "Retention failed (retried after the next backup): {e}")
            }
        }
    }
}

#[cfg(test)]
mod tests;
