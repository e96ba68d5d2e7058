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
    /// Which backup kind was drilled.
    pub kind: Kind,
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
            kind: Kind::Logical,
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

/// Drills `target` now: the latest committed backup of each kind it has (logical, physical) is
/// restored into a throwaway server and checked. Never fails as a call: a failure is a result
/// with `ok: false`.
pub async fn run(ctx: &Ctx<'_>, target: &Target) -> Vec<DrillResult> {
    if target.endpoint.is_some() {
        return vec![DrillResult::failed(
            target,
            "a restore drill starts a server from the target's own image, and a target declared by URL names none: test its backups by restoring one into a container (pgctl restore latest --from NAME --to SERVICE)",
        )];
    }
    let mut out = Vec::new();
    let latest = match latest_of(ctx, target).await {
        Ok(l) => l,
        Err(why) => return vec![DrillResult::failed(target, &why)],
    };
    for m in latest {
        out.push(run_one(ctx, target, m).await);
    }
    out
}

/// The newest committed backup of each kind; an error when there is none at all.
async fn latest_of(ctx: &Ctx<'_>, target: &Target) -> Result<Vec<Manifest>, String> {
    let spec = target.settings().ok_or_else(|| {
        format!(
            "target {} is invalid; fix its labels (see pgctl status)",
            target.target
        )
    })?;
    let dir = layout::target_dir(ctx.store.prefix(), &spec.prefix);
    let mut found = Vec::new();
    for kind in [Kind::Logical, Kind::Physical] {
        if let Some(m) = catalog::latest(ctx.store, &dir, kind, Some(&target.target.to_string()))
            .await
            .map_err(|e| format!("cannot list the backups under {dir}/: {e}"))?
        {
            found.push(m);
        }
    }
    if found.is_empty() {
        return Err(format!(
            "there is no committed backup of {} to drill under {dir}/",
            target.target
        ));
    }
    Ok(found)
}

/// One drill of backup `m`, within the target's timeout; its throwaway server removed whatever
/// happens.
async fn run_one(ctx: &Ctx<'_>, target: &Target, m: Manifest) -> DrillResult {
    let clock = Instant::now();
    let mut r = DrillResult {
        kind: m.kind,
        backup_id: Some(m.backup_id.to_string()),
        databases: m.databases.clone(),
        error: None,
        ..DrillResult::failed(target, "")
    };
    let limit = target
        .settings()
        .map(|s| s.timeout)
        .unwrap_or(Duration::from_secs(7200));
    // The throwaway server, once started: removed below whatever happened.
    let mut server = None;
    let steps = async {
        match m.kind {
            Kind::Logical => logical(ctx, target, &m, &mut r, &mut server).await,
            Kind::Physical => physical(ctx, target, &m, &mut server).await,
        }
    };
    let outcome = tokio::select! {
        o = tokio::time::timeout(limit, steps) => match o {
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
        Ok(Check { note, differences }) => {
            r.note = note;
            r.differences = differences;
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
    for d in &r.differences {
        tracing::warn!(target_id = %r.target, backup_id = ?r.backup_id, "Drill: {d}");
    }
    r.duration_seconds = clock.elapsed().as_secs_f64();
    r
}

/// What the comparison found.
struct Check {
    note: Option<String>,
    differences: Vec<String>,
}

/// A logical drill: the backup restored by `pgctl restore`'s own code into a fresh server, then
/// counted.
async fn logical(
    ctx: &Ctx<'_>,
    target: &Target,
    m: &Manifest,
    r: &mut DrillResult,
    server: &mut Option<String>,
) -> Result<Check, String> {
    let user = user_of(target)?;
    let image = image_of(ctx, target).await?;
    let id = start_server(ctx, target, &image, &user, None).await?;
    *server = Some(id.clone());
    wait_accepting(ctx, &id, &image).await?;
    let sandbox = ctx
        .docker
        .inspect(&id)
        .await
        .map_err(|e| format!("cannot inspect the drill's server: {e}"))?;
    let req = Request {
        backup: BackupRef::Id(m.backup_id),
        from: None,
        to: None,
        to_url: None,
        db: None,
        clean: true,
        kind: Kind::Logical,
        options: vec![],
        post_sql: None,
        keys: ctx.defaults.age_identity.clone(),
    };
    let plan = restore::plan_into(ctx.docker, ctx.defaults, m.clone(), None, &req, sandbox)
        .await
        .map_err(|e| format!("the restore of {} could not start: {e}", m.backup_id))?;
    restore::execute(ctx.docker, ctx.store, &plan, &restore::Quiet)
        .await
        .map_err(|e| format!("the restore of {} failed: {e}", m.backup_id))?;
    let access = Access::Exec {
        docker: ctx.docker.clone(),
        container: id.clone(),
        user,
    };
    compare(&access, m, r).await
}

/// The image the target's container runs, by id: the server a drill starts is the same build,
/// even when the tag has moved on since the container was created.
async fn image_of(ctx: &Ctx<'_>, target: &Target) -> Result<String, String> {
    ctx.docker
        .inspect_full(&target.container_id)
        .await
        .map(|c| c.image_id())
        .map_err(|e| format!("cannot inspect {}: {e}", target.container))
}

fn user_of(target: &Target) -> Result<String, String> {
    target.settings().map(|s| s.user.clone()).ok_or_else(|| {
        format!(
            "target {} is invalid; fix its labels (see pgctl status)",
            target.target
        )
    })
}

/// Stdin of `tar` in the throwaway server.
struct TarSink(crate::engine::docker::ExecInput);

impl restore::ChunkSink for TarSink {
    async fn send(&mut self, chunk: bytes::Bytes) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.0.write_all(&chunk).await
    }
}

/// A physical drill: the base backup unpacked (size and SHA-256 checked on the way, as a
/// physical restore does) into a server from the target's image, started with `pg_ctl`
/// (recovery to the backup's end, no archiving, no network), then checked: it is the backed-up
/// cluster (system identifier), out of recovery, and holds every database the backup listed.
/// A base backup is consistent at its end, not at one snapshot a query could count in, so
/// there are no row counts to compare.
async fn physical(
    ctx: &Ctx<'_>,
    target: &Target,
    m: &Manifest,
    server: &mut Option<String>,
) -> Result<Check, String> {
    let user = user_of(target)?;
    let p = m
        .physical
        .as_ref()
        .ok_or_else(|| format!("{} has no physical section in its manifest", m.backup_id))?;
    let object = m
        .objects
        .iter()
        .find(|o| o.kind == crate::model::manifest::ObjectKind::Base)
        .ok_or_else(|| format!("{} has no base backup object", m.backup_id))?;
    let source = image_of(ctx, target)
        .await
        .unwrap_or_else(|_| p.image.clone());
    // Idle until the data is in place; Postgres is started by hand below.
    let idle = vec![
        "/bin/sh".to_string(),
        "-c".into(),
        "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done".into(),
    ];
    let id = start_server(ctx, target, &source, &user, Some(idle)).await?;
    *server = Some(id.clone());
    let sh = |script: &str| {
        vec![
            "sh".to_string(),
            "-c".into(),
            script.to_string(),
            "sh".into(),
            p.data_directory.clone(),
        ]
    };
    let (out, input) = ctx
        .docker
        .exec_with_stdin(
            &id,
            &sh("set -e; mkdir -p \"$1\"; cd \"$1\"; tar -x -f -"),
            &[],
            Some("0"),
        )
        .await
        .map_err(|e| format!("cannot start tar in the drill's server: {e}"))?;
    let mut sink = TarSink(input);
    let keys = ctx.defaults.age_identity.as_deref();
    let streamed = restore::stream_object(
        ctx.store,
        m,
        object,
        keys,
        "tar",
        &mut sink,
        &restore::Quiet,
    )
    .await;
    {
        use tokio::io::AsyncWriteExt;
        let _ = sink.0.shutdown().await;
    }
    drop(sink);
    let exit = out
        .finish()
        .await
        .map_err(|e| format!("unpacking {} failed: {e}", object.name))?;
    streamed.map_err(|e| format!("the restore of {} failed: {e}", m.backup_id))?;
    if exit.code != 0 {
        return Err(format!(
            "unpacking {} failed (tar exit {}): {}",
            object.name, exit.code, exit.stderr
        ));
    }
    let prepare =
        "set -e; rm -f \"$1/postmaster.pid\"; chown -R postgres:postgres \"$1\"; chmod 0700 \"$1\"";
    run_in(ctx, &id, &sh(prepare), "0").await?;
    // Recovery to the end of the backup, then a normal start; no archiving, no TCP.
    let start = "pg_ctl -D \"$1\" -w -t 600 -l /tmp/drill-server.log -o \"-c listen_addresses='' -c archive_mode=off\" start || { tail -n 20 /tmp/drill-server.log >&2; exit 1; }";
    run_in(ctx, &id, &sh(start), "postgres").await?;
    let access = Access::Exec {
        docker: ctx.docker.clone(),
        container: id.clone(),
        user,
    };
    let row = access
        .query(
            "postgres",
            "SELECT (SELECT system_identifier FROM pg_control_system())::text || '|' || pg_is_in_recovery()::text",
        )
        .await
        .map_err(|e| format!("the restored cluster does not answer: {e}"))?;
    let row = row.first().cloned().unwrap_or_default();
    let (sysid, recovery) = row.split_once('|').unwrap_or((&row, ""));
    let mut differences = Vec::new();
    if sysid != p.system_identifier {
        differences.push(format!(
            "the restored server is cluster {sysid}, the backup is of cluster {}",
            p.system_identifier
        ));
    }
    if recovery != "false" {
        differences.push("the restored server is still in recovery".to_string());
    }
    let present = restored_databases(&access).await?;
    differences.extend(
        m.databases
            .iter()
            .filter(|d| !present.contains(d))
            .map(|d| facts::Difference::MissingDatabase(d.clone()).to_string()),
    );
    Ok(Check {
        note: None,
        differences,
    })
}

/// Runs a short command in the drill's server as `user`; its stderr is the error.
async fn run_in(ctx: &Ctx<'_>, id: &str, cmd: &[String], user: &str) -> Result<(), String> {
    let (exit, out) = ctx
        .docker
        .exec_capture(id, cmd, &[], Some(user))
        .await
        .map_err(|e| format!("cannot run a command in the drill's server: {e}"))?;
    if exit.code != 0 {
        return Err(format!(
            "the restored cluster did not start (exit {}): {} {}",
            exit.code,
            exit.stderr,
            out.trim()
        ));
    }
    Ok(())
}

async fn restored_databases(access: &Access) -> Result<Vec<String>, String> {
    access
        .query(
            "postgres",
            "SELECT datname FROM pg_database WHERE NOT datistemplate",
        )
        .await
        .map_err(|e| format!("cannot list the restored databases: {e}"))
}

/// Counts what the restore gave back and lists every difference from the manifest's facts;
/// says so when the backup recorded none.
async fn compare(access: &Access, m: &Manifest, r: &mut DrillResult) -> Result<Check, String> {
    let present = restored_databases(access).await?;
    let missing = |dbs: &mut dyn Iterator<Item = &String>| -> Vec<String> {
        dbs.filter(|d| !present.contains(d))
            .map(|d| facts::Difference::MissingDatabase(d.clone()).to_string())
            .collect()
    };
    let Some(recorded) = &m.facts else {
        return Ok(Check {
            differences: missing(&mut m.databases.iter()),
            note: Some(format!(
                "backup {} recorded no row counts (taken before drills existed, or its dump options leave tables out): only the restore itself and its database list were checked",
                m.backup_id
            )),
        });
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
    Ok(Check {
        note: None,
        differences: facts::compare(&recorded.databases, &restored)
            .iter()
            .map(|d| d.to_string())
            .collect(),
    })
}

/// Starts the throwaway server from `image` (with `entrypoint` instead of the image's when
/// given).
async fn start_server(
    ctx: &Ctx<'_>,
    target: &Target,
    image: &str,
    user: &str,
    entrypoint: Option<Vec<String>>,
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
        entrypoint,
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
    Ok(id)
}

/// Waits until the image's entrypoint has initialised the server and it accepts connections.
async fn wait_accepting(ctx: &Ctx<'_>, id: &str, image: &str) -> Result<(), String> {
    let deadline = Instant::now() + READY_WITHIN;
    // Over TCP: the image's entrypoint runs a socket-only server while it initialises.
    let probe = ["pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432"].map(String::from);
    loop {
        if let Ok((exit, _)) = ctx.docker.exec_capture(id, &probe, &[], None).await
            && exit.code == 0
        {
            return Ok(());
        }
        let running = ctx.docker.inspect(id).await.map(|c| c.running);
        if !matches!(running, Ok(true)) || Instant::now() > deadline {
            let logs = ctx.docker.logs_tail(id, 20).await;
            return Err(format!(
                "the throwaway server from {image} did not accept connections within {}s: {logs}",
                READY_WITHIN.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
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
