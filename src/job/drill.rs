//! Restore drills (README "Restore drills"): the latest committed logical backup of a target is
//! restored into a throwaway server started from the target's own image — on no network,
//! within memory and CPU limits — by the same code as `pgctl restore`, and what it gives back
//! is compared with the facts the backup recorded in its own snapshot ([`crate::model::facts`]),
//! not with the live source, which has moved on. The throwaway server and its data are removed
//! whatever happens; one left by a killed sidecar is removed at the next start
//! ([`remove_leftovers`]). The source is never touched: it is only inspected for its image.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::Defaults;
use crate::discovery::Target;
use crate::engine::container::Sandbox;
use crate::engine::docker::DockerClient;
use crate::engine::pg::Access;
use crate::model::facts::{self, DbFacts};
use crate::model::layout::{self, Kind};
use crate::model::manifest::Manifest;
use crate::restore::{self, BackupRef, Request};
use crate::store::{Store, catalog};

/// Label on every throwaway server: the target it drills. Not under `pgbackup.`: such labels on
/// a container that is not opted in are reported as typos.
pub const DRILL_OF: &str = "pgbackup-drill.of";
/// Label on every throwaway server: which sidecar started it ([`owner`]), so a sidecar removes
/// only its own leftovers.
pub const DRILL_OWNER: &str = "pgbackup-drill.owner";
/// Memory of a throwaway server: enough for a restore's index builds, bounded so a drill cannot
/// starve the host's real servers.
pub const MEMORY_BYTES: i64 = 2 << 30;
/// CPUs of a throwaway server.
pub const NANO_CPUS: i64 = 1_000_000_000;
/// How long a throwaway server may take to initialise and accept connections.
const READY_WITHIN: Duration = Duration::from_secs(180);

/// What a drill found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrillResult {
    pub target: String,
    pub ok: bool,
    /// The backup restored (none when there was nothing to drill).
    pub backup_id: Option<String>,
    pub started_at: DateTime<Utc>,
    pub duration_seconds: f64,
    /// Databases restored and compared.
    pub databases: Vec<String>,
    /// Tables whose row counts were compared (0 when the backup recorded no facts).
    pub tables_checked: usize,
    pub rows_checked: u64,
    /// Why it failed, in one sentence.
    pub error: Option<String>,
    /// Every difference found between the recorded facts and the restore.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub differences: Vec<String>,
    /// Said when the backup had no facts to compare (its dump options left tables out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// `schedule` or `manual`.
    #[serde(default)]
    pub trigger: String,
}

impl DrillResult {
    /// A drill of `target` that could not run, for `why`.
    pub fn failed(target: &Target, why: &str) -> DrillResult {
        DrillResult {
            target: target.target.to_string(),
            ok: false,
            backup_id: None,
            started_at: Utc::now(),
            duration_seconds: 0.0,
            databases: vec![],
            tables_checked: 0,
            rows_checked: 0,
            error: Some(why.to_string()),
            differences: vec![],
            note: None,
            trigger: String::new(),
        }
    }
}

/// What a drill needs from the controller.
pub struct Ctx<'a> {
    pub docker: &'a DockerClient,
    pub store: &'a dyn Store,
    pub defaults: &'a Defaults,
    /// Cancelled on shutdown: the drill stops and its server is removed.
    pub cancel: &'a CancellationToken,
}

/// The owner label of this sidecar's throwaway servers: the sidecar's own compose
/// `project/service` (or container name), which a restarted or re-created sidecar keeps; for
/// `pgctl run` outside a container, the host name and the scope. Two controllers of one
/// identity would remove each other's servers at start-up: run one sidecar per project.
pub async fn owner(docker: &DockerClient) -> String {
    static OWNER: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    let id = OWNER
        .get_or_init(|| async {
            match docker.own_container().await {
                Some(me) => crate::model::TargetId::of(&me.labels(), &me.name())
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| me.name()),
                None => format!(
                    "host {} ({})",
                    std::env::var("HOSTNAME")
                        .ok()
                        .filter(|h| !h.is_empty())
                        .or_else(|| std::fs::read_to_string("/etc/hostname")
                            .ok()
                            .map(|h| h.trim().to_string()))
                        .unwrap_or_default(),
                    docker.scope()
                ),
            }
        })
        .await;
    format!("{DRILL_OWNER}={id}")
}

/// Drills `target` now: restores its latest committed logical backup into a throwaway server
/// and compares. Never fails as a call: a failure is a result with `ok: false`.
pub async fn run(ctx: &Ctx<'_>, target: &Target) -> DrillResult {
    let started_at = Utc::now();
    let clock = Instant::now();
    let mut r = DrillResult {
        started_at,
        error: None,
        ..DrillResult::failed(target, "")
    };
    let limit = target
        .settings()
        .map(|s| s.timeout)
        .unwrap_or(Duration::from_secs(7200));
    // The throwaway server, once started: removed below whatever happened.
    let mut server = None;
    let outcome = tokio::select! {
        o = tokio::time::timeout(limit, drill(ctx, target, &mut r, &mut server)) => match o {
            Ok(o) => o,
            Err(_) => Err(format!("the drill took longer than {} (pgbackup.timeout)", humantime::format_duration(limit))),
        },
        _ = ctx.cancel.cancelled() => Err("the controller is shutting down; the drill was stopped".into()),
    };
    if let Some(id) = server
        && let Err(e) = ctx.docker.remove_with_volumes(&id).await
    {
        tracing::warn!(target_id = %r.target, container = %id, "Cannot remove the drill's server (the next start removes it): {e}");
    }
    match outcome {
        Ok(note) => {
            r.note = note;
            r.ok = r.differences.is_empty();
            if !r.ok {
                r.error = Some(format!(
                    "the restore does not match the backup's facts: {}",
                    r.differences.join("; ")
                ));
            }
        }
        Err(e) => r.error = Some(e),
    }
    r.duration_seconds = clock.elapsed().as_secs_f64();
    r
}

/// The drill's steps; `server` holds the throwaway server's id as soon as it exists.
async fn drill(
    ctx: &Ctx<'_>,
    target: &Target,
    r: &mut DrillResult,
    server: &mut Option<String>,
) -> Result<Option<String>, String> {
    let spec = target.settings().ok_or_else(|| {
        format!(
            "target {} is invalid; fix its labels (see pgctl status)",
            target.target
        )
    })?;
    let dir = layout::target_dir(ctx.store.prefix(), &spec.prefix);
    let m = catalog::latest(
        ctx.store,
        &dir,
        Kind::Logical,
        Some(&target.target.to_string()),
    )
    .await
    .map_err(|e| format!("cannot list the backups under {dir}/: {e}"))?
    .ok_or_else(|| {
        format!(
            "there is no committed logical backup of {} to drill under {dir}/",
            target.target
        )
    })?;
    r.backup_id = Some(m.backup_id.to_string());
    let source = ctx
        .docker
        .inspect(&target.container_id)
        .await
        .map_err(|e| format!("cannot inspect {}: {e}", target.container))?;
    let id = start_server(ctx, target, &source.image, &spec.user).await?;
    *server = Some(id.clone());
    let sandbox = ctx
        .docker
        .inspect(&id)
        .await
        .map_err(|e| format!("cannot inspect the drill's server: {e}"))?;
    let req = Request {
        backup: BackupRef::Id(m.backup_id),
        from: None,
        to: None,
        db: None,
        clean: true,
        kind: Kind::Logical,
        options: vec![],
        post_sql: None,
    };
    let plan = restore::plan_into(ctx.docker, ctx.defaults, m.clone(), None, &req, sandbox)
        .await
        .map_err(|e| format!("the restore of {} could not start: {e}", m.backup_id))?;
    restore::execute(ctx.docker, ctx.store, &plan, &restore::Quiet)
        .await
        .map_err(|e| format!("the restore of {} failed: {e}", m.backup_id))?;
    r.databases = m.databases.clone();
    let access = Access::Exec {
        docker: ctx.docker.clone(),
        container: id.clone(),
        user: spec.user.clone(),
    };
    compare(&access, &m, r).await
}

/// Counts what the restore gave back and records every difference from the manifest's facts.
/// Returns a note when the backup recorded none.
async fn compare(
    access: &Access,
    m: &Manifest,
    r: &mut DrillResult,
) -> Result<Option<String>, String> {
    let present: Vec<String> = access
        .query(
            "postgres",
            "SELECT datname FROM pg_database WHERE NOT datistemplate",
        )
        .await
        .map_err(|e| format!("cannot list the restored databases: {e}"))?;
    let Some(recorded) = &m.facts else {
        r.differences = m
            .databases
            .iter()
            .filter(|d| !present.contains(d))
            .map(|d| facts::Difference::MissingDatabase(d.clone()).to_string())
            .collect();
        return Ok(Some(format!(
            "backup {} recorded no row counts (taken before drills existed, or its dump options leave tables out): only the restore itself and its database list were checked",
            m.backup_id
        )));
    };
    let mut restored: BTreeMap<String, DbFacts> = BTreeMap::new();
    for db in recorded.databases.keys() {
        if !present.contains(db) {
            continue;
        }
        let rows = access
            .query(db, facts::COUNT_SQL)
            .await
            .map_err(|e| format!("cannot count the rows of the restored {db:?}: {e}"))?;
        restored.insert(db.clone(), facts::read(&rows)?);
    }
    r.tables_checked = recorded.databases.values().map(|d| d.tables.len()).sum();
    r.rows_checked = recorded
        .databases
        .values()
        .flat_map(|d| d.tables.values())
        .sum();
    r.differences = facts::compare(&recorded.databases, &restored)
        .iter()
        .map(|d| d.to_string())
        .collect();
    for d in &r.differences {
        tracing::warn!(target_id = %r.target, backup_id = ?r.backup_id, "Drill: {d}");
    }
    Ok(None)
}

/// Starts the throwaway server from `image` and waits until it accepts connections.
async fn start_server(
    ctx: &Ctx<'_>,
    target: &Target,
    image: &str,
    user: &str,
) -> Result<String, String> {
    let mut secret = [0u8; 16];
    getrandom::fill(&mut secret).map_err(|e| format!("no random source: {e}"))?;
    let (label, owner) = owner(ctx.docker)
        .await
        .split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .expect("label=value");
    let sandbox = Sandbox {
        image: image.to_string(),
        // The password is never used (the restore runs inside over the local socket, and the
        // server is on no network); the image requires one.
        env: vec![
            format!("POSTGRES_USER={user}"),
            format!("POSTGRES_PASSWORD={}", hex::encode(secret)),
        ],
        labels: HashMap::from([
            (DRILL_OF.to_string(), target.target.to_string()),
            (label, owner),
        ]),
        memory_bytes: MEMORY_BYTES,
        nano_cpus: NANO_CPUS,
    };
    let name = format!(
        "pgbackup-drill-{}-{}",
        target
            .target
            .service
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect::<String>(),
        &hex::encode(&secret[..3])
    );
    let id = ctx
        .docker
        .start_sandbox(&name, &sandbox)
        .await
        .map_err(|e| format!("cannot start a throwaway server from {image}: {e}"))?;
    tracing::info!(target_id = %target.target, container = %name, image, "Drill server started.");
    let deadline = Instant::now() + READY_WITHIN;
    // Over TCP: the image's entrypoint runs a socket-only server while it initialises.
    let probe = ["pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432"].map(String::from);
    loop {
        if let Ok((exit, _)) = ctx.docker.exec_capture(&id, &probe, &[], None).await
            && exit.code == 0
        {
            break;
        }
        let running = ctx.docker.inspect(&id).await.map(|c| c.running);
        if !matches!(running, Ok(true)) || Instant::now() > deadline {
            let logs = ctx.docker.logs_tail(&id, 20).await;
            let _ = ctx.docker.remove_with_volumes(&id).await;
            return Err(format!(
                "the throwaway server from {image} did not accept connections within {}s: {logs}",
                READY_WITHIN.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(id)
}

/// Removes the throwaway servers this sidecar left behind (killed mid-drill). Returns how many.
pub async fn remove_leftovers(docker: &DockerClient) -> usize {
    let ids = match docker.ids_labelled(&owner(docker).await).await {
        Ok(ids) => ids,
        Err(e) => {
            tracing::warn!("Cannot look for leftover drill servers: {e}");
            return 0;
        }
    };
    let mut removed = 0;
    for id in ids {
        match docker.remove_with_volumes(&id).await {
            Ok(()) => {
                removed += 1;
                tracing::info!(container = %id, "Removed a drill server left by an earlier run.");
            }
            Err(e) => tracing::warn!(container = %id, "Cannot remove a leftover drill server: {e}"),
        }
    }
    removed
}
