//! One logical backup of one target: list databases, stream every dump through the pipeline
//! into the store, then `SHA256SUMS`, then `manifest.json` (the commit marker).

use std::sync::atomic::Ordering;

use bytes::Bytes;
use chrono::Utc;

use crate::config::Secret;
use crate::config::labels::TargetSpec;
use crate::discovery::Target;
use crate::engine::docker::{Container, DockerClient};
use crate::engine::pg::{self, Access, PgError};
use crate::model::layout::{self, BackupId, Kind};
use crate::model::manifest::{self, Manifest, Object, ObjectKind, Postgres};
use crate::model::{Databases, Format, Method};
use crate::pipeline;
use crate::restore::sql::DropTransactionTimeout;
use crate::store::catalog;
use crate::store::{Store, UploadError};
use tokio::io::{AsyncRead, ReadBuf};

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("target {0} is invalid; fix its labels (see pgctl status)")]
    Invalid(String),
    #[error("container {0} is not running")]
    NotRunning(String),
    #[error("{0}")]
    Pg(#[from] PgError),
    #[error("{what}: {source}")]
    Upload {
        what: String,
        #[source]
        source: UploadError,
    },
    #[error("pg_dump of database {database:?} failed (exit code {code}): {stderr}")]
    Dump {
        database: String,
        code: i64,
        stderr: String,
    },
    #[error("{0}")]
    Refused(String),
    /// The backup's folder held objects before this run wrote anything: they are another
    /// writer's and must not be removed.
    #[error("{0}")]
    FolderTaken(String),
}

impl BackupError {
    /// The database the failure concerns, for metrics and logs.
    pub fn database(&self) -> Option<&str> {
        match self {
            BackupError::Dump { database, .. } => Some(database),
            _ => None,
        }
    }
}

pub struct Ctx<'a> {
    pub docker: &'a DockerClient,
    pub store: &'a dyn Store,
}

/// The password of a target for `connect` mode: `POSTGRES_PASSWORD`, or the file named by
/// `POSTGRES_PASSWORD_FILE` read inside the container.
async fn password_of(ctx: &Ctx<'_>, c: &Container) -> Result<Option<Secret>, PgError> {
    if let Some(p) = c.env.get("POSTGRES_PASSWORD").filter(|p| !p.is_empty()) {
        return Ok(Some(Secret::new(p.clone())));
    }
    if let Some(path) = c.env.get("POSTGRES_PASSWORD_FILE") {
        let (exit, out) = ctx
            .docker
            .exec_capture(&c.id, &["cat".to_string(), path.clone()], &[], None)
            .await?;
        if exit.code != 0 {
            return Err(PgError::Other(format!(
                "cannot read POSTGRES_PASSWORD_FILE={path} in container {}: {}",
                c.name, exit.stderr
            )));
        }
        return Ok(Some(Secret::new(
            out.trim_end_matches(['\n', '\r']).to_string(),
        )));
    }
    Ok(None)
}

pub async fn access_for(
    ctx: &Ctx<'_>,
    c: &Container,
    spec: &TargetSpec,
) -> Result<Access, PgError> {
    Ok(match spec.method {
        Method::Exec => Access::Exec {
            docker: ctx.docker.clone(),
            container: c.id.clone(),
            user: spec.user.clone(),
        },
        // The container name resolves on every user-defined network the sidecar shares with it.
        Method::Connect => Access::Connect {
            host: c.name.clone(),
            port: 5432,
            user: spec.user.clone(),
            password: password_of(ctx, c).await?,
        },
    })
}

/// What the job learned about the server before dumping.
struct Server {
    version: String,
    major: u32,
    dump_tool: String,
}

async fn server_info(access: &Access, tool: &str) -> Result<Server, BackupError> {
    let rows = access
        .query(
            "postgres",
            "SELECT current_setting('server_version'), current_setting('server_version_num')",
        )
        .await?;
    let row = rows.first().cloned().unwrap_or_default();
    let (version, num) = row.split_once('|').unwrap_or((row.as_str(), ""));
    let major = pg::major_of(num).ok_or_else(|| {
        BackupError::Refused(format!("cannot read the server version from {row:?}"))
    })?;
    let dump_tool = access.version(tool).await?;
    let client_major = pg::major_of(&dump_tool).unwrap_or(0);
    if client_major < major {
        return Err(BackupError::Refused(format!(
            "the sidecar's {dump_tool} is older than the server (Postgres {major}) and cannot dump it: use pgbackup.method=exec, which runs the server's own pg_dump"
        )));
    }
    Ok(Server {
        version: version.to_string(),
        major,
        dump_tool,
    })
}

async fn databases(access: &Access, spec: &TargetSpec) -> Result<Vec<String>, BackupError> {
    Ok(match &spec.databases {
        Databases::List(l) => l.clone(),
        Databases::All => {
            access
                .query(
                    "postgres",
                    "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY datname",
                )
                .await?
        }
    })
}

/// A reader passing SQL through [`DropTransactionTimeout`] (see [`needs_timeout_filter`]).
struct Filtered<R> {
    inner: R,
    filter: Option<DropTransactionTimeout>,
    out: Vec<u8>,
    pos: usize,
    buf: Vec<u8>,
}

impl<R> Filtered<R> {
    fn new(inner: R, on: bool) -> Filtered<R> {
        Filtered {
            inner,
            filter: on.then(DropTransactionTimeout::default),
            out: Vec::new(),
            pos: 0,
            buf: vec![0; 64 * 1024],
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Filtered<R> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.filter.is_none() && this.pos >= this.out.len() {
            // Off, or ended: straight through (an ended reader returns 0 bytes again).
            return std::pin::Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        loop {
            if this.pos < this.out.len() {
                let n = (this.out.len() - this.pos).min(buf.remaining());
                buf.put_slice(&this.out[this.pos..this.pos + n]);
                this.pos += n;
                return std::task::Poll::Ready(Ok(()));
            }
            let Some(filter) = this.filter.as_mut() else {
                return std::task::Poll::Ready(Ok(()));
            };
            this.out.clear();
            this.pos = 0;
            let mut rb = ReadBuf::new(&mut this.buf);
            std::task::ready!(std::pin::Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            let result = if rb.filled().is_empty() {
                let r = filter.finish(&mut this.out);
                this.filter = None;
                r
            } else {
                filter.feed(rb.filled(), &mut this.out)
            };
            result.map_err(std::io::Error::other)?;
        }
    }
}

/// pg_dump 17+ writes `SET transaction_timeout = 0;` into plain dumps of older servers, which
/// reject it: such a dump (connect mode, the sidecar's newer pg_dump) is filtered so that it
/// loads into its own major with standard tools.
fn needs_timeout_filter(format: Format, server_major: u32, dump_tool: &str) -> bool {
    format != Format::Custom
        && server_major < 17
        && pg::major_of(dump_tool).is_some_and(|m| m >= 17)
}

/// Streams one program's output into one object; checks the exit code after the stream ended.
#[allow(clippy::too_many_arguments)]
async fn dump_object(
    ctx: &Ctx<'_>,
    access: &Access,
    spec: &TargetSpec,
    key: &str,
    program: &str,
    args: &[String],
    label: &str,
    filter: bool,
) -> Result<(u64, pipeline::Uploaded), BackupError> {
    let mut stream = access.stream(program, args).await?;
    let mut filtered = Filtered::new(&mut stream, filter);
    let (counted, raw) = pipeline::counting(&mut filtered);
    // The pipeline borrows the stream; it is finished (exit code) once the upload is done.
    let compressed = pipeline::compress(counted, spec.compression);
    let uploaded = pipeline::store_stream(ctx.store, key, compressed).await;
    drop(filtered);
    let exit = stream.finish().await?;
    if exit.code != 0 {
        if uploaded.is_ok() {
            let _ = ctx.store.delete(key).await;
        }
        return Err(BackupError::Dump {
            database: label.to_string(),
            code: exit.code,
            stderr: exit.stderr,
        });
    }
    let uploaded = uploaded.map_err(|source| BackupError::Upload {
        what: format!("uploading {key}"),
        source,
    })?;
    Ok((raw.load(Ordering::Relaxed), uploaded))
}

/// `--dbname=dbname='…'`: a database name, quoted as a connection parameter, so that no name
/// (`a=b`, `postgres://…`) is ever read as a connection string by pg_dump.
pub fn dbname_arg(db: &str) -> String {
    format!("--dbname={}", pg::conninfo_dbname(db))
}

/// A valid target's settings and its container, which must be running.
async fn running<'t>(
    ctx: &Ctx<'_>,
    target: &'t Target,
) -> Result<(&'t TargetSpec, Container), BackupError> {
    let spec = target
        .settings()
        .ok_or_else(|| BackupError::Invalid(target.target.to_string()))?;
    let c = ctx
        .docker
        .inspect(&target.container_id)
        .await
        .map_err(PgError::from)?;
    if !c.running {
        return Err(BackupError::NotRunning(c.name));
    }
    Ok((spec, c))
}

/// Runs one logical backup and commits it. Nothing is listed unless this returns Ok.
///
/// On failure the caller removes what was written ([`discard`]), unless the error is
/// [`BackupError::FolderTaken`].
pub async fn logical(
    ctx: &Ctx<'_>,
    target: &Target,
    id: BackupId,
) -> Result<Manifest, BackupError> {
    let now = id.time;
    let (spec, c) = running(ctx, target).await?;
    let access = access_for(ctx, &c, spec).await?;
    let server = server_info(&access, "pg_dump").await?;
    let dbs = databases(&access, spec).await?;
    let dir = layout::backup_dir(ctx.store.prefix(), &spec.prefix, &id);
    ensure_own_folder(ctx, spec, target).await?;
    ensure_new_folder(ctx, &dir).await?;
    let mut objects = Vec::new();
    {
        if spec.globals {
            let name = layout::globals_object(spec.compression);
            let key = layout::join(&[&dir, &name]);
            // Roles are dumped by the server's own pg_dumpall, inside the target, whatever the
            // method: a newer pg_dumpall leaves out what it does not read from an older server
            // (pg_dumpall 17 writes no GRANTED BY for servers before 16), and the roles are small.
            let own = Access::Exec {
                docker: ctx.docker.clone(),
                container: c.id.clone(),
                user: spec.user.clone(),
            };
            let (raw, up) = dump_object(
                ctx,
                &own,
                spec,
                &key,
                "pg_dumpall",
                &["--globals-only".into(), "--no-password".into()],
                "(globals)",
                false,
            )
            .await?;
            objects.push(Object {
                name,
                kind: ObjectKind::Globals,
                database: None,
                size: up.size,
                raw_size: raw,
                sha256: up.sha256,
            });
        }
        for db in &dbs {
            let name = layout::database_object(db, spec.format, spec.compression);
            // Names are one-to-one (layout::database_object); this guards the manifest anyway:
            // two objects under one name would overwrite each other and fail every restore.
            if let Some(other) = objects.iter().find(|o: &&Object| o.name == name) {
                return Err(BackupError::Refused(format!(
                    "database {db:?} would be stored as {name}, which already holds {}: nothing was committed",
                    other.database.as_deref().unwrap_or("the roles")
                )));
            }
            let key = layout::join(&[&dir, &name]);
            let mut args = vec![
                "--no-password".to_string(),
                match spec.format {
                    // pg_dump's own compression off: ours is streamed and parallel.
                    Format::Custom => "--format=custom".into(),
                    Format::Plain | Format::Tar => "--format=plain".into(),
                },
            ];
            match spec.format {
                Format::Custom => args.push("--compress=0".into()),
                // The database itself too (owner, ACL, comment, settings): restores and
                // `psql -f` bring it back whole. Custom archives always hold it.
                Format::Plain | Format::Tar => args.push("--create".into()),
            }
            args.extend(spec.dump_options.iter().cloned());
            args.push(dbname_arg(db));
            let started = std::time::Instant::now();
            let filter = needs_timeout_filter(spec.format, server.major, &server.dump_tool);
            let (raw, up) =
                dump_object(ctx, &access, spec, &key, "pg_dump", &args, db, filter).await?;
            tracing::info!(target_id = %target.target, database = %db, raw_bytes = raw, stored_bytes = up.size,
                duration_ms = started.elapsed().as_millis() as u64, "Database dumped.");
            objects.push(Object {
                name,
                kind: ObjectKind::Database,
                database: Some(db.clone()),
                size: up.size,
                raw_size: raw,
                sha256: up.sha256,
            });
        }
        upload_sums(ctx, &dir, &objects).await?;
        let m = Manifest {
            format_version: manifest::FORMAT_VERSION,
            backup_id: id,
            kind: Kind::Logical,
            target: target.target.to_string(),
            prefix: dir.clone(),
            container: c.name.clone(),
            method: spec.method,
            format: spec.format,
            compression: spec.compression.to_string(),
            postgres: Postgres {
                server_version: server.version.clone(),
                major: server.major,
                dump_tool: server.dump_tool.clone(),
            },
            databases: dbs.clone(),
            objects: objects.clone(),
            started_at: now,
            finished_at: Utc::now(),
            tool: manifest::Tool::default(),
            physical: None,
        };
        commit_manifest(ctx, &dir, m).await
    }
}

/// `SHA256SUMS` for the objects written so far.
async fn upload_sums(ctx: &Ctx<'_>, dir: &str, objects: &[Object]) -> Result<(), BackupError> {
    let sums: Vec<(String, String)> = objects
        .iter()
        .map(|o| (o.name.clone(), o.sha256.clone()))
        .collect();
    ctx.store
        .put(
            &layout::join(&[dir, layout::SUMS]),
            Bytes::from(layout::sums_file(&sums)),
        )
        .await
        .map_err(|e| BackupError::Upload {
            what: "writing SHA256SUMS".into(),
            source: e.into(),
        })
}

/// Refuses to write into another target's folder: with a `pgbackup.prefix` of its own, the
/// newest committed backup there must be this target's (a prefix pointing at the folder of a
/// target that is not running, or of a target on another host, is caught here). A target in
/// its default folder, `project/service`, owns it: an intruder there is refused on its side, and
/// retention and `latest` skip what it wrote.
async fn ensure_own_folder(
    ctx: &Ctx<'_>,
    spec: &TargetSpec,
    target: &Target,
) -> Result<(), BackupError> {
    if spec.prefix == target.target.to_string() {
        return Ok(());
    }
    let dir = layout::target_dir(ctx.store.prefix(), &spec.prefix);
    let owner = catalog::folder_owner(ctx.store, &dir)
        .await
        .map_err(|e| BackupError::Upload {
            what: format!("listing {dir}/"),
            source: e.into(),
        })?;
    match owner {
        Some(o) if o != target.target.to_string() => Err(BackupError::FolderTaken(format!(
            "{dir}/ holds the backups of target {o}: a target's folder must be its own; set another pgbackup.prefix on {} (nothing was written)",
            target.target
        ))),
        _ => Ok(()),
    }
}

/// Refuses to write into a folder that already holds anything: ids are unique per run
/// ([`BackupId::unique`]), so a non-empty folder is another writer's.
async fn ensure_new_folder(ctx: &Ctx<'_>, dir: &str) -> Result<(), BackupError> {
    let found = catalog::keys(ctx.store, &format!("{dir}/"))
        .await
        .map_err(|e| BackupError::Upload {
            what: format!("listing {dir}/"),
            source: e.into(),
        })?;
    match found.first() {
        None => Ok(()),
        Some(k) => Err(BackupError::FolderTaken(format!(
            "the backup folder {dir}/ already holds {k} ({} objects), written by another writer; nothing was written and nothing there was touched",
            found.len()
        ))),
    }
}

/// Before the commit: every object the manifest names is stored with the size this run wrote.
/// Catches anything that overwrote or removed an object meanwhile (another writer, a lifecycle
/// rule), so a committed backup is never one whose objects differ from its manifest.
async fn check_uploaded(ctx: &Ctx<'_>, dir: &str, objects: &[Object]) -> Result<(), BackupError> {
    for o in objects {
        let key = layout::join(&[dir, &o.name]);
        let size = ctx
            .store
            .head(&key)
            .await
            .map_err(|e| BackupError::Upload {
                what: format!("checking {key} before the commit"),
                source: e.into(),
            })?;
        if size != Some(o.size) {
            return Err(BackupError::Refused(format!(
                "{key} is {} after this backup wrote {} bytes: something else wrote or removed it; the backup was not committed",
                size.map(|s| format!("{s} bytes"))
                    .unwrap_or_else(|| "missing".into()),
                o.size
            )));
        }
    }
    Ok(())
}

/// Removes everything under a failed backup's own folder: its objects and any multipart upload
/// still open. Best effort (no manifest means nothing is listed; `prune` removes what remains).
pub async fn discard(ctx: &Ctx<'_>, dir: &str) {
    let root = format!("{dir}/");
    match catalog::keys(ctx.store, &root).await {
        Ok(keys) => {
            for k in &keys {
                let _ = ctx.store.delete(k).await;
            }
        }
        Err(e) => {
            tracing::warn!(dir, error = %e, "Could not list a failed backup's objects; prune will remove them.")
        }
    }
    match ctx.store.uploads(&root).await {
        Ok(open) => {
            for u in open {
                if let Err(e) = ctx.store.abort(&u.key, &u.upload_id).await {
                    tracing::warn!(key = u.key, error = %e, "Could not abort an upload; prune will.");
                }
            }
        }
        Err(e) => {
            tracing::warn!(dir, error = %e, "Could not list a failed backup's uploads; prune will abort them.")
        }
    }
}

/// Writes `manifest.json`, last: its presence is what makes the backup exist.
async fn commit_manifest(ctx: &Ctx<'_>, dir: &str, m: Manifest) -> Result<Manifest, BackupError> {
    check_uploaded(ctx, dir, &m.objects).await?;
    ctx.store
        .put(
            &layout::join(&[dir, layout::MANIFEST]),
            Bytes::from(m.to_json()),
        )
        .await
        .map_err(|e| BackupError::Upload {
            what: "committing manifest.json".into(),
            source: e.into(),
        })?;
    Ok(m)
}

/// A temporary physical replication slot, held by a psql session in the target while a base
/// backup runs.
///
/// `pg_basebackup` writes one tar to stdout, which allows only `--wal-method=fetch`: the WAL
/// written during the backup is fetched at its end, and with the official image's
/// `wal_keep_size = 0` a checkpoint during the backup may already have removed it ("requested
/// WAL segment … has already been removed"). A slot that reserves WAL from before the backup
/// starts keeps every segment the backup needs. It is temporary: the server drops it when the
/// session ends (see [`pg::Held`]), so a forgotten slot can never fill the disk.
async fn hold_wal(
    docker: &DockerClient,
    c: &Container,
    user: &str,
    name: &str,
) -> Result<pg::Held, BackupError> {
    pg::Held::open(
        docker,
        &c.id,
        user,
        "postgres",
        &format!("SELECT pg_create_physical_replication_slot('{name}', true, true);"),
    )
    .await
    .map_err(|e| {
        BackupError::Refused(format!(
            "cannot create a temporary replication slot to keep the WAL of the base backup (check max_replication_slots): {e}"
        ))
    })
}

/// One physical base backup: `pg_basebackup` inside the target (always through `docker exec`,
/// a local replication connection), as one tar stream with the WAL needed for consistency
/// (`-X fetch`, kept by a temporary slot: [`hold_wal`]) and the server's own `backup_manifest`
/// inside, through the same pipeline.
pub async fn physical(
    ctx: &Ctx<'_>,
    target: &Target,
    id: BackupId,
) -> Result<Manifest, BackupError> {
    let now = id.time;
    let (spec, c) = running(ctx, target).await?;
    let access = Access::Exec {
        docker: ctx.docker.clone(),
        container: c.id.clone(),
        user: spec.user.clone(),
    };
    let server = server_info(&access, "pg_basebackup").await?;
    let row = access
        .query(
            "postgres",
            "SELECT system_identifier, current_setting('data_directory') FROM pg_control_system()",
        )
        .await?
        .into_iter()
        .next()
        .unwrap_or_default();
    let (system_identifier, data_directory) = row
        .split_once('|')
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .ok_or_else(|| {
            BackupError::Refused(format!("cannot read the system identifier: {row:?}"))
        })?;
    let dir = layout::backup_dir(ctx.store.prefix(), &spec.prefix, &id);
    ensure_own_folder(ctx, spec, target).await?;
    ensure_new_folder(ctx, &dir).await?;
    let mut objects = Vec::new();
    // Unique per run, like the id (slot names allow [a-z0-9_]).
    let slot_name = format!(
        "pgbackup_{}_{:06x}",
        id.time.format("%Y%m%d%H%M%S"),
        id.tag.unwrap_or(0)
    );
    let slot = hold_wal(ctx.docker, &c, &spec.user, &slot_name).await?;
    {
        let name = layout::base_object(spec.compression);
        let key = layout::join(&[&dir, &name]);
        let args: Vec<String> = [
            "--no-password",
            "--pgdata=-",
            "--format=tar",
            "--wal-method=fetch",
            "--checkpoint=fast",
            "--label=pgbackup",
        ]
        .map(String::from)
        .to_vec();
        let started = std::time::Instant::now();
        let streamed = dump_object(
            ctx,
            &access,
            spec,
            &key,
            "pg_basebackup",
            &args,
            "(base)",
            false,
        )
        .await;
        slot.release().await;
        let (raw, up) = streamed?;
        tracing::info!(target_id = %target.target, raw_bytes = raw, stored_bytes = up.size,
            duration_ms = started.elapsed().as_millis() as u64, "Base backup streamed.");
        objects.push(Object {
            name,
            kind: ObjectKind::Base,
            database: None,
            size: up.size,
            raw_size: raw,
            sha256: up.sha256,
        });
        upload_sums(ctx, &dir, &objects).await?;
        let m = Manifest {
            format_version: manifest::FORMAT_VERSION,
            backup_id: id,
            kind: Kind::Physical,
            target: target.target.to_string(),
            prefix: dir.clone(),
            container: c.name.clone(),
            method: Method::Exec,
            format: Format::Tar,
            compression: spec.compression.to_string(),
            postgres: Postgres {
                server_version: server.version.clone(),
                major: server.major,
                dump_tool: server.dump_tool.clone(),
            },
            databases: vec![],
            objects: objects.clone(),
            started_at: now,
            finished_at: Utc::now(),
            tool: manifest::Tool::default(),
            physical: Some(manifest::Physical {
                system_identifier: system_identifier.clone(),
                data_directory: data_directory.clone(),
                wal_method: "fetch".into(),
                image: c.image.clone(),
            }),
        };
        commit_manifest(ctx, &dir, m).await
    }
}
