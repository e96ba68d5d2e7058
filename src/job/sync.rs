//! Scheduled copies (README "Scheduled copies"): the latest committed logical backup of a source
//! target restored into a destination service (a staging or shared copy) on the destination's
//! schedule, by the code of `pgctl restore --clean` — all or nothing, the destination's data
//! untouched when anything fails — with `*.sql` files run afterwards (anonymising, adjusting).
//! The source is only read from the bucket, never touched.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::Defaults;
use crate::config::labels::SyncSpec;
use crate::discovery::{SyncDest, Target};
use crate::engine::docker::DockerClient;
use crate::model::layout::{self, Kind};
use crate::restore::{self, BackupRef, Request};
use crate::store::{Store, catalog};

/// A copy's limit (the restore is all or nothing: a copy cut off changes nothing).
const LIMIT: Duration = Duration::from_secs(6 * 3600);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncResult {
    pub destination: String,
    pub from: String,
    /// Copied, or nothing to do.
    pub ok: bool,
    /// Nothing new: the source's latest backup is the one copied last time.
    pub skipped: bool,
    pub backup_id: Option<String>,
    pub databases: Vec<String>,
    pub started_at: DateTime<Utc>,
    pub duration_seconds: f64,
    pub error: Option<String>,
    /// `schedule` or `manual`.
    #[serde(default)]
    pub trigger: String,
}

impl SyncResult {
    /// A copy into `dest` that could not run, for `why`.
    pub fn failed(dest: &SyncDest, why: &str) -> SyncResult {
        SyncResult {
            destination: dest.destination.to_string(),
            from: dest.settings().map(|s| s.from.clone()).unwrap_or_default(),
            ok: false,
            skipped: false,
            backup_id: None,
            databases: vec![],
            started_at: Utc::now(),
            duration_seconds: 0.0,
            error: Some(why.to_string()),
            trigger: String::new(),
        }
    }
}

pub struct Ctx<'a> {
    pub docker: &'a DockerClient,
    pub store: &'a dyn Store,
    pub defaults: &'a Defaults,
    pub cancel: &'a CancellationToken,
}

/// Why a copy into `dest` must not run, if it must not. Pure.
pub fn refusal(dest: &SyncDest, spec: &SyncSpec) -> Option<String> {
    if dest.destination.matches(&spec.from) {
        return Some(format!(
            "{} is its own source (pgbackup.sync.from={}): a copy never restores into the service it copies",
            dest.destination, spec.from
        ));
    }
    if dest.is_target && !spec.allow_target {
        return Some(format!(
            "{} is a labelled backup target (pgbackup.enable=true): a copy would replace the data it backs up; set pgbackup.sync.allow_target=true on it to allow that",
            dest.destination
        ));
    }
    None
}

/// The bucket folder of `from`: its `pgbackup.prefix` when it is a target this sidecar sees,
/// else its `project/service`.
fn source_dir(store: &dyn Store, targets: &[Target], from: &str) -> String {
    let prefix = targets
        .iter()
        .filter(|t| t.target.matches(from))
        .find_map(|t| t.settings().map(|s| s.prefix.clone()))
        .unwrap_or_else(|| from.to_string());
    layout::target_dir(store.prefix(), &prefix)
}

/// Copies the source's latest backup into `dest` unless it is the one `last` copied. Never
/// fails as a call: a failure is a result with `ok: false`.
pub async fn run(
    ctx: &Ctx<'_>,
    dest: &SyncDest,
    targets: &[Target],
    last: Option<&str>,
) -> SyncResult {
    let clock = Instant::now();
    let mut r = SyncResult {
        error: None,
        ..SyncResult::failed(dest, "")
    };
    let outcome = tokio::select! {
        o = tokio::time::timeout(LIMIT, copy(ctx, dest, targets, last, &mut r)) => o.unwrap_or_else(|_| Err(format!("the copy took longer than {}", humantime::format_duration(LIMIT)))),
        _ = ctx.cancel.cancelled() => Err("the controller is shutting down; the copy was stopped (nothing was changed)".into()),
    };
    match outcome {
        Ok(()) => r.ok = true,
        Err(e) => r.error = Some(e),
    }
    r.duration_seconds = clock.elapsed().as_secs_f64();
    r
}

async fn copy(
    ctx: &Ctx<'_>,
    dest: &SyncDest,
    targets: &[Target],
    last: Option<&str>,
    r: &mut SyncResult,
) -> Result<(), String> {
    let spec = dest.settings().ok_or_else(|| {
        format!(
            "copy destination {} has invalid labels (see pgctl status)",
            dest.destination
        )
    })?;
    if let Some(why) = refusal(dest, spec) {
        return Err(why);
    }
    let dir = source_dir(ctx.store, targets, &spec.from);
    let m = catalog::latest(ctx.store, &dir, Kind::Logical, None)
        .await
        .map_err(|e| format!("cannot list the backups under {dir}/: {e}"))?
        .ok_or_else(|| {
            format!(
                "there is no committed logical backup of {} under {dir}/ to copy",
                spec.from
            )
        })?;
    let id = m.backup_id.to_string();
    r.backup_id = Some(id.clone());
    if last == Some(id.as_str()) {
        r.skipped = true;
        return Ok(());
    }
    let container = ctx
        .docker
        .inspect(&dest.container_id)
        .await
        .map_err(|e| format!("cannot inspect {}: {e}", dest.container))?;
    let req = Request {
        backup: BackupRef::Id(m.backup_id),
        from: Some(spec.from.clone()),
        to: None,
        to_url: None,
        db: spec.db.clone(),
        clean: true,
        kind: Kind::Logical,
        options: vec![],
        post_sql: spec.post_sql.clone(),
        keys: ctx.defaults.age_identity.clone(),
    };
    let plan = restore::plan_into(ctx.docker, ctx.defaults, m, None, &req, container)
        .await
        .map_err(|e| format!("the copy of {id} could not start (nothing was changed): {e}"))?;
    let done = restore::execute(ctx.docker, ctx.store, &plan, &restore::Quiet)
        .await
        .map_err(|e| format!("the copy of {id} failed: {e}"))?;
    r.databases = done.databases;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(enabled: bool, labels: &[(&str, &str)]) -> SyncDest {
        let mut all = vec![("pgbackup.sync.schedule", "@daily")];
        all.extend_from_slice(labels);
        let mut c = crate::discovery::test_container("id", "staging", &all, true);
        if !enabled {
            c.labels.remove(crate::config::labels::ENABLE);
        }
        SyncDest::from_container(&c).expect("a destination")
    }

    #[test]
    fn copies_never_go_into_their_source_or_a_backup_target_unless_allowed() {
        let d = dest(false, &[("pgbackup.sync.from", "shop/db")]);
        assert_eq!(refusal(&d, d.settings().unwrap()), None);
        let d = dest(true, &[("pgbackup.sync.from", "shop/db")]);
        let why = refusal(&d, d.settings().unwrap()).unwrap();
        assert!(why.contains("pgbackup.sync.allow_target=true"), "{why}");
        let d = dest(
            true,
            &[
                ("pgbackup.sync.from", "shop/db"),
                ("pgbackup.sync.allow_target", "true"),
            ],
        );
        assert_eq!(refusal(&d, d.settings().unwrap()), None);
        let own = d.destination.to_string();
        let d = dest(false, &[("pgbackup.sync.from", &own)]);
        let why = refusal(&d, d.settings().unwrap()).unwrap();
        assert!(why.contains("its own source"), "{why}");
    }

    #[test]
    fn bad_copy_labels_are_named() {
        let c = crate::discovery::test_container(
            "id",
            "staging",
            &[
                ("pgbackup.sync.from", "shop/db"),
                ("pgbackup.sync.post_sql", "relative/dir"),
            ],
            true,
        );
        let errors = match crate::config::labels::parse_sync(&c.labels).unwrap() {
            Err(e) => e,
            Ok(s) => panic!("accepted {s:?}"),
        };
        let labels: Vec<&str> = errors.iter().map(|e| e.label.as_str()).collect();
        assert_eq!(labels, ["pgbackup.sync.schedule", "pgbackup.sync.post_sql"]);
    }
}
