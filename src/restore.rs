//! Logical restore, all or nothing (SPEC §5, §7): S3 → SHA-256 + size → decompression →
//! `psql`, `pg_restore --single-transaction` (or, after `--clean`'s SQL, `pg_restore` into
//! `psql`) reading stdin inside the target through the exec API.
//!
//! Every database is restored inside one transaction: psql's `BEGIN` … `COMMIT` (sent only
//! after the whole object arrived with the manifest's size and checksum), or pg_restore's own
//! single transaction. Until the object is verified the last chunk of the stream is held back,
//! so `pg_restore` cannot finish an archive that might still turn out damaged. If anything goes wrong — a checksum, a statement,
//! the connection, `pgctl` itself being killed — the input ends without `COMMIT` and the server
//! rolls the transaction back. Databases created and roles added by the restore are dropped
//! again; with several databases, every transaction stays open until all of them are loaded.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use aws_sdk_s3::Client;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

use crate::catalog;
use crate::config::{Defaults, S3Config};
use crate::discovery::Target;
use crate::docker::{Container, DockerClient, DockerError, ExecExit, ExecInput};
use crate::fetch::{self, Checked, Damage};
use crate::labels::{Format, TargetId};
use crate::layout::{self, BackupId, Kind};
use crate::manifest::{Manifest, Object, ObjectKind};
use crate::pg::{self, Access, PgError};

/// Printed by psql after `COMMIT` succeeded: the only proof a restore was committed.
const COMMITTED: &str = "pgbackup:committed";
/// Globals (roles) are read whole before anything runs; they are small.
const GLOBALS_LIMIT: u64 = 64 * 1024 * 1024;
const CHUNK: usize = 256 * 1024;

/// What `pgctl restore BACKUP` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupRef {
    /// The newest committed backup of the source target.
    Latest,
    /// A backup id; the target comes from `--from` or is found by searching the bucket.
    Id(BackupId),
    /// A key from the bucket root: the backup folder, its manifest, or one object in it.
    Key {
        dir: String,
        id: BackupId,
        object: Option<String>,
    },
}

impl FromStr for BackupRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s == "latest" {
            return Ok(BackupRef::Latest);
        }
        if let Ok(id) = s.parse::<BackupId>() {
            return Ok(BackupRef::Id(id));
        }
        let bad = || {
            format!(
                "{s:?} names no backup: expected `latest`, a backup id (20261120T030000Z-logical) or a key (project/service/20261120T030000Z-logical[/object]); see `pgctl list`"
            )
        };
        // `s3://bucket/key` is accepted too: people copy keys from other tools.
        let key = match s.strip_prefix("s3://") {
            Some(rest) => rest.split_once('/').map(|(_, k)| k).ok_or_else(bad)?,
            None => s,
        };
        let key = key.trim_matches('/');
        if let Some((dir, id)) = key.rsplit_once('/')
            && let Ok(id) = id.parse::<BackupId>()
        {
            return Ok(BackupRef::Key {
                dir: dir.to_string(),
                id,
                object: None,
            });
        }
        let (dir, id, name) = layout::parse_key(key).ok_or_else(bad)?;
        let object = (name != layout::MANIFEST && name != layout::SUMS).then(|| name.to_string());
        Ok(BackupRef::Key {
            dir: dir.to_string(),
            id,
            object,
        })
    }
}

/// Why a restore did not happen or did not complete. Every variant leaves the target as it was.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// Bad arguments: the backup or target named does not exist.
    #[error("{0}")]
    Usage(String),
    /// The restore would overwrite data or cannot work on this target; nothing was changed.
    #[error("{0}")]
    Refused(String),
    /// The restore ran and was rolled back.
    #[error("{0}")]
    Failed(String),
}

impl From<PgError> for RestoreError {
    fn from(e: PgError) -> Self {
        RestoreError::Failed(e.to_string())
    }
}

impl From<DockerError> for RestoreError {
    fn from(e: DockerError) -> Self {
        RestoreError::Failed(e.to_string())
    }
}

impl RestoreError {
    pub fn exit_code(&self) -> i32 {
        match self {
            RestoreError::Usage(_) => crate::exit::USAGE,
            RestoreError::Refused(_) => crate::exit::REFUSED,
            RestoreError::Failed(_) => crate::exit::FAILED,
        }
    }
}

pub struct Request {
    pub backup: BackupRef,
    pub from: Option<String>,
    pub to: Option<String>,
    pub db: Option<String>,
    pub clean: bool,
    /// Which kind `latest` means.
    pub kind: Kind,
}

/// One database to restore and what the target holds under that name now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbPlan {
    pub object: Object,
    pub database: String,
    pub exists: bool,
    /// Tables, views, sequences, functions, types and schemas of its own.
    pub objects: u64,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub manifest: Manifest,
    pub container: Container,
    pub target: String,
    pub user: String,
    pub server_major: u32,
    pub restore_tool: String,
    pub globals: Option<Object>,
    pub databases: Vec<DbPlan>,
    pub clean: bool,
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.manifest;
        writeln!(
            f,
            "restore {} of {} ({}, Postgres {}, {}) into {} ({}, Postgres {}, as {})",
            m.backup_id,
            m.target,
            match m.format {
                Format::Custom => "custom",
                Format::Plain => "plain",
                Format::Tar => "tar",
            },
            m.postgres.major,
            crate::table::human_bytes(m.size()),
            self.target,
            self.container.name,
            self.server_major,
            self.user
        )?;
        if let Some(g) = &self.globals {
            writeln!(
                f,
                "  roles      from {} (missing roles are created)",
                g.name
            )?;
        }
        for d in &self.databases {
            let what = match (d.exists, d.objects) {
                (false, _) => "created".to_string(),
                (true, 0) => "exists, empty".to_string(),
                (true, n) if self.clean => format!("exists, {n} objects replaced (--clean)"),
                (true, n) => format!("exists, {n} objects"),
            };
            writeln!(
                f,
                "  database   {:<20} from {} ({what})",
                d.database, d.object.name
            )?;
        }
        Ok(())
    }
}

/// The refusals that need no I/O: overwriting without `--clean`, an archive the target's
/// `pg_restore` is too old to read.
pub fn check(plan: &Plan) -> Result<(), RestoreError> {
    let dump_major = pg::major_of(&plan.manifest.postgres.dump_tool).unwrap_or(0);
    let tool_major = pg::major_of(&plan.restore_tool).unwrap_or(0);
    if plan.manifest.format == Format::Custom && tool_major < dump_major {
        return Err(RestoreError::Refused(format!(
            "backup {} was written by {} but {} has {}, which cannot read it: restore into a server with Postgres {dump_major} or newer (the custom format is only readable by the same or a newer pg_restore)",
            plan.manifest.backup_id,
            plan.manifest.postgres.dump_tool,
            plan.target,
            plan.restore_tool
        )));
    }
    let busy: Vec<String> = plan
        .databases
        .iter()
        .filter(|d| d.exists && d.objects > 0)
        .map(|d| format!("{} ({} objects)", d.database, d.objects))
        .collect();
    if !busy.is_empty() && !plan.clean {
        return Err(RestoreError::Refused(format!(
            "{} already holds data in {}: nothing was changed. Pass --clean to replace it (everything in those databases is dropped and restored in one transaction; on any failure the old data stays), or restore into another target with --to",
            plan.target,
            busy.join(", ")
        )));
    }
    Ok(())
}

/// The role restores run as: the target's `pgbackup.user` label when it is a valid target, else
/// its `POSTGRES_USER`, else `postgres`.
fn user_of(c: &Container, defaults: &Defaults) -> String {
    Target::from_container(c, defaults)
        .and_then(|t| t.settings().map(|s| s.user.clone()))
        .or_else(|| {
            c.env
                .get("POSTGRES_USER")
                .filter(|u| !u.is_empty())
                .cloned()
        })
        .unwrap_or_else(|| "postgres".to_string())
}

/// The compose project of the container pgctl runs in (the sidecar), if any: Docker sets the
/// hostname to the container's short id.
async fn own_project(docker: &DockerClient) -> Option<String> {
    let me = docker.own_container().await?;
    me.config?.labels?.remove("com.docker.compose.project")
}

/// Finds a running container by `project/service`, service, container name or id. A service
/// name found in several compose projects resolves to the one in `prefer`, else to the
/// sidecar's own project; otherwise it is ambiguous.
pub async fn find_container(
    docker: &DockerClient,
    name: &str,
    prefer: Option<&str>,
) -> Result<Container, RestoreError> {
    let all = docker.list_running(&[]).await?;
    let ids: Vec<(Option<TargetId>, &Container)> = all
        .iter()
        .map(|c| (TargetId::of(&c.labels, &c.name), c))
        .collect();
    let exact: Vec<&Container> = ids
        .iter()
        .filter(|(t, c)| {
            t.as_ref().is_some_and(|t| t.to_string() == name) || c.name == name || c.id == name
        })
        .map(|(_, c)| *c)
        .collect();
    if let [c] = exact.as_slice() {
        return Ok((*c).clone());
    }
    let by_service: Vec<(Option<&TargetId>, &Container)> = ids
        .iter()
        .filter(|(t, c)| {
            t.as_ref().is_some_and(|t| t.service == name)
                || (name.len() >= 12 && c.id.starts_with(name))
        })
        .map(|(t, c)| (t.as_ref(), *c))
        .collect();
    if by_service.len() > 1 {
        let own = own_project(docker).await;
        for project in [prefer.map(String::from), own].into_iter().flatten() {
            let mine: Vec<&Container> = by_service
                .iter()
                .filter(|(t, _)| t.is_some_and(|t| t.project.as_deref() == Some(project.as_str())))
                .map(|(_, c)| *c)
                .collect();
            if let [c] = mine.as_slice() {
                return Ok((*c).clone());
            }
        }
    }
    match by_service.as_slice() {
        [(_, c)] => Ok((*c).clone()),
        [] => Err(RestoreError::Usage(format!(
            "no running container is named {name:?} (as project/service, service or container name): start it, or check `docker compose ps`"
        ))),
        many => Err(RestoreError::Usage(format!(
            "{name:?} is ambiguous: {}; name it as project/service",
            many.iter()
                .map(|(t, c)| t.map(|t| t.to_string()).unwrap_or_else(|| c.name.clone()))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The folder holding a target's backups: from its `pgbackup.prefix` when it runs with labels,
/// else `project/service` as named.
async fn source_dir(
    docker: &DockerClient,
    s3cfg: &S3Config,
    defaults: &Defaults,
    name: &str,
) -> Result<String, RestoreError> {
    if let Ok(c) = find_container(docker, name, None).await {
        if let Some(spec) = Target::from_container(&c, defaults)
            .as_ref()
            .and_then(|t| t.settings())
        {
            return Ok(layout::target_dir(&s3cfg.prefix, &spec.prefix));
        }
        if let Some(t) = TargetId::of(&c.labels, &c.name) {
            return Ok(layout::target_dir(&s3cfg.prefix, &t.to_string()));
        }
    }
    Ok(layout::target_dir(&s3cfg.prefix, name))
}

async fn by_key(
    client: &Client,
    s3cfg: &S3Config,
    dir: &str,
    id: &BackupId,
) -> Result<Manifest, RestoreError> {
    let key = layout::join(&[dir, &id.to_string(), layout::MANIFEST]);
    let found = catalog::exists(client, s3cfg, &key)
        .await
        .map_err(|e| RestoreError::Failed(e.to_string()))?;
    if !found {
        return Err(RestoreError::Usage(format!(
            "{dir}/{id} is not a committed backup (no manifest.json): see `pgctl list`"
        )));
    }
    catalog::read_manifest(client, s3cfg, &key)
        .await
        .map_err(RestoreError::Failed)
}

/// Finds the manifest `req.backup` names. Only committed backups are ever found.
pub async fn resolve_backup(
    docker: &DockerClient,
    client: &Client,
    s3cfg: &S3Config,
    defaults: &Defaults,
    req: &Request,
) -> Result<(Manifest, Option<String>), RestoreError> {
    let s3err = |e: crate::s3::S3Error| RestoreError::Failed(e.to_string());
    match &req.backup {
        BackupRef::Latest => {
            let source = req.from.as_deref().or(req.to.as_deref()).ok_or_else(|| {
                RestoreError::Usage(
                    "`latest` needs a target: pass --from TARGET (whose backups) or --to TARGET (restores its own latest)".into(),
                )
            })?;
            let dir = source_dir(docker, s3cfg, defaults, source).await?;
            let m = catalog::latest(client, s3cfg, &dir, req.kind)
                .await
                .map_err(s3err)?
                .ok_or_else(|| {
                    RestoreError::Usage(format!(
                        "no committed {} backup of {source} under {dir}/: see `pgctl list`",
                        req.kind
                    ))
                })?;
            Ok((m, None))
        }
        BackupRef::Key { dir, id, object } => {
            Ok((by_key(client, s3cfg, dir, id).await?, object.clone()))
        }
        BackupRef::Id(id) => {
            if let Some(from) = &req.from {
                let dir = source_dir(docker, s3cfg, defaults, from).await?;
                return Ok((by_key(client, s3cfg, &dir, id).await?, None));
            }
            let mut keys = catalog::manifest_keys(client, s3cfg, None)
                .await
                .map_err(s3err)?;
            keys.retain(|(k, _)| k == id);
            let (found, problems) = catalog::read_manifests(client, s3cfg, &keys).await;
            if let Some(p) = problems.first() {
                return Err(RestoreError::Failed(p.clone()));
            }
            match found.len() {
                1 => Ok((found.into_iter().next().expect("one"), None)),
                0 => Err(RestoreError::Usage(format!(
                    "no committed backup has id {id}: see `pgctl list`"
                ))),
                _ => Err(RestoreError::Usage(format!(
                    "several targets have a backup {id} ({}): pass --from TARGET or the full key",
                    found
                        .iter()
                        .map(|m| m.target.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))),
            }
        }
    }
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// SQL counting what a database holds of its own (schemas other than the system ones).
const OWN_OBJECTS: &str = "SELECT
  (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_')
+ (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_')
+ (SELECT count(*) FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_'
       AND t.typrelid = 0 AND t.typcategory <> 'A')
+ (SELECT count(*) FROM pg_namespace
     WHERE nspname NOT IN ('pg_catalog', 'information_schema', 'public') AND nspname !~ '^pg_')";

/// Looks at the target and the backup and decides what will happen. Changes nothing.
pub async fn plan(
    docker: &DockerClient,
    defaults: &Defaults,
    manifest: Manifest,
    object: Option<String>,
    req: &Request,
) -> Result<Plan, RestoreError> {
    if manifest.kind == Kind::Physical || manifest.format == Format::Tar {
        return Err(RestoreError::Usage(format!(
            "{} is a physical base backup: restore it with --physical into a new volume (not available in this version), or unpack base.tar into an empty data directory by hand",
            manifest.backup_id
        )));
    }
    let to = req.to.clone().unwrap_or_else(|| manifest.target.clone());
    let source_project = manifest.target.split_once('/').map(|(p, _)| p.to_string());
    let container = find_container(docker, &to, source_project.as_deref()).await?;
    let user = user_of(&container, defaults);
    let access = exec_access(docker, &container, &user);
    let mut chosen: Vec<&Object> = manifest
        .objects
        .iter()
        .filter(|o| o.kind == ObjectKind::Database)
        .collect();
    let wanted = req.db.clone().or_else(|| {
        object.as_ref().and_then(|name| {
            manifest
                .objects
                .iter()
                .find(|o| &o.name == name)
                .and_then(|o| o.database.clone())
        })
    });
    if let Some(name) = &object
        && !manifest.objects.iter().any(|o| &o.name == name)
    {
        return Err(RestoreError::Usage(format!(
            "backup {} has no object {name:?}; it holds {}",
            manifest.backup_id,
            names(&manifest)
        )));
    }
    if let Some(db) = &wanted {
        chosen.retain(|o| o.database.as_deref() == Some(db.as_str()));
        if chosen.is_empty() {
            return Err(RestoreError::Usage(format!(
                "backup {} has no database {db:?}; it holds {}",
                manifest.backup_id,
                manifest.databases.join(", ")
            )));
        }
    }
    let globals = manifest
        .objects
        .iter()
        .find(|o| o.kind == ObjectKind::Globals)
        .cloned();
    let version = access
        .query("postgres", "SELECT current_setting('server_version_num')")
        .await?;
    let server_major = version
        .first()
        .and_then(|v| pg::major_of(v))
        .ok_or_else(|| RestoreError::Failed(format!("cannot read the server version of {to}")))?;
    let restore_tool = access.version("pg_restore").await?;
    let existing: BTreeSet<String> = access
        .query("postgres", "SELECT datname FROM pg_database")
        .await?
        .into_iter()
        .collect();
    let mut databases = Vec::new();
    for o in chosen {
        let database = o.database.clone().unwrap_or_default();
        let exists = existing.contains(&database);
        let objects = if exists {
            access
                .query(&database, OWN_OBJECTS)
                .await?
                .first()
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(0)
        } else {
            0
        };
        databases.push(DbPlan {
            object: o.clone(),
            database,
            exists,
            objects,
        });
    }
    let target = TargetId::of(&container.labels, &container.name)
        .map(|t| t.to_string())
        .unwrap_or_else(|| container.name.clone());
    Ok(Plan {
        manifest,
        container,
        target,
        user,
        server_major,
        restore_tool,
        globals,
        databases,
        clean: req.clean,
    })
}

fn names(m: &Manifest) -> String {
    m.objects
        .iter()
        .map(|o| o.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn exec_access(docker: &DockerClient, c: &Container, user: &str) -> Access {
    Access::Exec {
        docker: docker.clone(),
        container: c.id.clone(),
        user: user.to_string(),
    }
}

/// SQL run first, inside the transaction, by `--clean`: every schema of the database's own is
/// dropped and `public` recreated as `initdb` makes it.
pub fn clean_sql(server_major: u32) -> String {
    let public = if server_major >= 15 {
        "CREATE SCHEMA public AUTHORIZATION pg_database_owner;\nGRANT USAGE ON SCHEMA public TO PUBLIC;\n"
    } else {
        "CREATE SCHEMA public;\nGRANT ALL ON SCHEMA public TO PUBLIC;\n"
    };
    format!(
        "DO $pgbackup$
DECLARE s name;
BEGIN
  FOR s IN SELECT nspname FROM pg_namespace
           WHERE nspname NOT IN ('pg_catalog', 'information_schema') AND nspname !~ '^pg_'
  LOOP
    EXECUTE format('DROP SCHEMA %I CASCADE', s);
  END LOOP;
END
$pgbackup$;
{public}COMMENT ON SCHEMA public IS 'standard public schema';
"
    )
}

/// A role name as written by pg_dumpall: bare (lower case) or double-quoted.
fn parse_ident(s: &str) -> Option<(String, &str)> {
    if let Some(rest) = s.strip_prefix('"') {
        let mut name = String::new();
        let mut chars = rest.char_indices();
        while let Some((i, ch)) = chars.next() {
            if ch == '"' {
                if rest[i + 1..].starts_with('"') {
                    name.push('"');
                    chars.next();
                } else {
                    return Some((name, &rest[i + 1..]));
                }
            } else {
                name.push(ch);
            }
        }
        None
    } else {
        let end = s
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
            .unwrap_or(s.len());
        (end > 0).then(|| (s[..end].to_string(), &s[end..]))
    }
}

/// The role a globals line creates or alters, if any.
fn role_of_line(line: &str) -> Option<String> {
    for prefix in [
        "CREATE ROLE ",
        "ALTER ROLE ",
        "COMMENT ON ROLE ",
        "SECURITY LABEL FOR ",
    ] {
        if let Some(rest) = line.strip_prefix(prefix) {
            if prefix == "SECURITY LABEL FOR " {
                let at = rest.find(" ON ROLE ")?;
                return parse_ident(&rest[at + 9..]).map(|(n, _)| n);
            }
            return parse_ident(rest).map(|(n, _)| n);
        }
    }
    None
}

/// What to run of a `pg_dumpall --globals-only` script on a server that already has
/// `existing` roles: roles it lacks are created with their attributes; roles it has are left
/// exactly as they are (their passwords too); tablespaces, which cannot be created inside a
/// transaction and whose paths belong to the old server, are skipped. Returns the script, the
/// roles it creates and what was skipped.
pub fn filter_globals(
    script: &str,
    existing: &BTreeSet<String>,
) -> (String, Vec<String>, Vec<String>) {
    let mut out = String::new();
    let mut created = Vec::new();
    let mut skipped = Vec::new();
    for line in script.lines() {
        if line.starts_with("CREATE TABLESPACE ") || line.starts_with("ALTER TABLESPACE ") {
            skipped.push(line.to_string());
            continue;
        }
        if let Some(role) = role_of_line(line) {
            if existing.contains(&role) {
                continue;
            }
            if line.starts_with("CREATE ROLE ") {
                created.push(role);
            }
        }
        // psql meta-commands (\restrict, \connect) and everything else pass through.
        out.push_str(line);
        out.push('\n');
    }
    (out, created, skipped)
}

/// One `psql` session inside the target, reading the restore from stdin.
struct Session {
    input: ExecInput,
    output: JoinHandle<Result<(ExecExit, String), DockerError>>,
    /// The last chunk, held back until the object is verified.
    tail: Option<Bytes>,
    epilogue: &'static str,
    database: String,
}

const EPILOGUE: &str = "\nCOMMIT;\n\\echo pgbackup:committed\n";

impl Session {
    /// Starts psql (plain SQL), `pg_restore --single-transaction` (custom archives) or, when
    /// a `prelude` must run in the same transaction, `pg_restore -f - | psql` in `c`.
    async fn start(
        docker: &DockerClient,
        c: &Container,
        user: &str,
        database: &str,
        format: Format,
        prelude: &str,
    ) -> Result<Session, RestoreError> {
        let psql = r#"psql -X -q -o /dev/null -v ON_ERROR_STOP=1 -U "$1" -d "$2""#;
        let begin = format!("BEGIN;\n{prelude}");
        let (script, env, epilogue, first) = match format {
            // Nothing to run first: pg_restore loads the archive itself in one transaction
            // (no SQL round trip through psql), and commits only after reading it to the end,
            // which the held-back tail delays until the stream is verified.
            Format::Custom if prelude.is_empty() => (
                format!(
                    r#"pg_restore -U "$1" -d "$2" --single-transaction --exit-on-error && echo {COMMITTED}"#
                ),
                vec![],
                "",
                None,
            ),
            // pg_restore turns the archive into SQL behind the prelude; COMMIT follows only
            // when it read the whole archive without error.
            Format::Custom => (
                format!(
                    r#"{{ printf '%s\n' "$PGBACKUP_PRELUDE" && pg_restore -f - && printf '%s\n' "$PGBACKUP_EPILOGUE"; }} | {psql}"#
                ),
                vec![
                    format!("PGBACKUP_PRELUDE={begin}"),
                    format!("PGBACKUP_EPILOGUE={EPILOGUE}"),
                ],
                "",
                None,
            ),
            Format::Plain | Format::Tar => (format!("exec {psql}"), vec![], EPILOGUE, Some(begin)),
        };
        let cmd = vec![
            "sh".to_string(),
            "-c".to_string(),
            script,
            "pgbackup-restore".to_string(),
            user.to_string(),
            database.to_string(),
        ];
        let (mut stream, mut input) = docker.exec_with_stdin(&c.id, &cmd, &env, None).await?;
        // Drained concurrently: psql blocks when nobody reads what it prints.
        let output = tokio::spawn(async move {
            let mut tail = Vec::new();
            let mut chunk = vec![0u8; 8192];
            loop {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        tail.extend_from_slice(&chunk[..n]);
                        if tail.len() > 4096 {
                            tail.drain(..tail.len() - 4096);
                        }
                    }
                }
            }
            let exit = stream.finish().await?;
            Ok((exit, String::from_utf8_lossy(&tail).into_owned()))
        });
        if let Some(first) = first {
            input
                .write_all(first.as_bytes())
                .await
                .map_err(|e| RestoreError::Failed(format!("sending to psql failed: {e}")))?;
        }
        Ok(Session {
            input,
            output,
            tail: None,
            epilogue,
            database: database.to_string(),
        })
    }

    /// Sends a chunk, holding back the newest one.
    async fn send(&mut self, chunk: Bytes) -> std::io::Result<()> {
        if let Some(prev) = self.tail.replace(chunk) {
            self.input.write_all(&prev).await?;
        }
        Ok(())
    }

    /// Ends the input without `COMMIT` and without the held-back tail: the server rolls back.
    /// Returns what the session printed (its error, when it failed by itself).
    async fn abort(mut self) -> String {
        let _ = self.input.shutdown().await;
        drop(self.input);
        match tokio::time::timeout(Duration::from_secs(60), self.output).await {
            Ok(Ok(Ok((exit, _)))) => exit.stderr,
            Ok(Ok(Err(e))) => e.to_string(),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "psql did not end within 60 s of its input ending".into(),
        }
    }

    /// Sends the tail and `COMMIT`, ends the input and checks that the commit happened.
    async fn commit(mut self) -> Result<(), RestoreError> {
        let sent = async {
            if let Some(tail) = self.tail.take() {
                self.input.write_all(&tail).await?;
            }
            self.input.write_all(self.epilogue.as_bytes()).await?;
            self.input.flush().await?;
            self.input.shutdown().await
        }
        .await;
        let db = self.database.clone();
        drop(self.input);
        let (exit, out) = self
            .output
            .await
            .map_err(|e| RestoreError::Failed(e.to_string()))??;
        if exit.code == 0 && out.contains(COMMITTED) {
            return Ok(());
        }
        Err(RestoreError::Failed(format!(
            "restoring database {db:?} failed and was rolled back (exit code {}): {}{}",
            exit.code,
            if exit.stderr.is_empty() {
                "no error output"
            } else {
                &exit.stderr
            },
            sent.err()
                .map(|e| format!(" (sending the input failed: {e})"))
                .unwrap_or_default()
        )))
    }
}

/// Reports bytes read from S3 (a progress bar on a terminal).
pub trait Progress: Send + Sync {
    fn start(&self, what: &str, total: u64);
    fn set(&self, done: u64);
    fn finish(&self);
}

/// No progress output.
pub struct Quiet;

impl Progress for Quiet {
    fn start(&self, _: &str, _: u64) {}
    fn set(&self, _: u64) {}
    fn finish(&self) {}
}

/// Where a verified stream goes: a psql session, or tar in a helper container.
pub trait ChunkSink: Send {
    fn send(&mut self, chunk: Bytes) -> impl Future<Output = std::io::Result<()>> + Send;
}

impl ChunkSink for Session {
    async fn send(&mut self, chunk: Bytes) -> std::io::Result<()> {
        Session::send(self, chunk).await
    }
}

/// Streams one object of `m` (S3 → size + SHA-256 → decompression) into `sink`, then checks the
/// manifest's size and checksum. `what` names the destination in errors.
pub async fn stream_object(
    client: &Client,
    s3cfg: &S3Config,
    m: &Manifest,
    object: &Object,
    what: &str,
    sink: &mut impl ChunkSink,
    progress: &dyn Progress,
) -> Result<(), RestoreError> {
    let compression = fetch::compression_of(m).map_err(RestoreError::Failed)?;
    let body = fetch::open(client, s3cfg, m, object)
        .await
        .map_err(|e| RestoreError::Failed(e.to_string()))?;
    let (checked, tallies) = Checked::new(body);
    let mut reader = fetch::decompress(checked, compression);
    progress.start(what, object.size);
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(n) => n,
            Err(e) => {
                // A truncated or corrupted stream usually shows here first.
                progress.finish();
                let damage = tallies
                    .verdict(object)
                    .err()
                    .map(|d| d.to_string())
                    .unwrap_or_default();
                return Err(RestoreError::Failed(format!(
                    "reading {} failed after {} bytes: {e} {damage}",
                    object.name,
                    tallies.bytes()
                )));
            }
        };
        if n == 0 {
            break;
        }
        progress.set(tallies.bytes());
        if let Err(e) = sink.send(Bytes::copy_from_slice(&buf[..n])).await {
            progress.finish();
            return Err(RestoreError::Failed(format!(
                "{what} stopped reading the restore: {e}"
            )));
        }
    }
    // The decoders read every frame up to the end of the object, so the tally is complete.
    progress.finish();
    tallies
        .verdict(object)
        .map_err(|e: Damage| RestoreError::Failed(format!("{e}: restore rolled back")))
}

/// What a finished restore did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    pub backup_id: String,
    pub source: String,
    pub target: String,
    pub databases: Vec<String>,
    pub roles_created: Vec<String>,
    pub skipped: Vec<String>,
    pub bytes: u64,
    pub duration_seconds: f64,
}

/// Runs the plan. On any error the target is left as it was before.
pub async fn execute(
    docker: &DockerClient,
    client: &Client,
    s3cfg: &S3Config,
    plan: &Plan,
    progress: &dyn Progress,
) -> Result<Outcome, RestoreError> {
    check(plan)?;
    let started = std::time::Instant::now();
    let access = exec_access(docker, &plan.container, &plan.user);
    let mut created_roles = Vec::new();
    let mut skipped = Vec::new();
    let mut created_dbs: Vec<String> = Vec::new();
    let mut sessions: Vec<Session> = Vec::new();

    let result = async {
        if let Some(g) = &plan.globals {
            let (script, created, skip) = globals_script(client, s3cfg, plan, g, &access).await?;
            skipped = skip;
            let mut s = Session::start(
                docker,
                &plan.container,
                &plan.user,
                "postgres",
                Format::Plain,
                "",
            )
            .await?;
            s.send(Bytes::from(script))
                .await
                .map_err(|e| RestoreError::Failed(format!("sending roles failed: {e}")))?;
            // Roles commit first: the databases' transactions must see them.
            s.commit().await?;
            created_roles = created;
        }
        for d in &plan.databases {
            if !d.exists {
                access
                    .query(
                        "postgres",
                        &format!("CREATE DATABASE {}", quote_ident(&d.database)),
                    )
                    .await?;
                created_dbs.push(d.database.clone());
            }
            let prelude = if plan.clean && d.exists {
                clean_sql(plan.server_major)
            } else {
                String::new()
            };
            let mut s = Session::start(
                docker,
                &plan.container,
                &plan.user,
                &d.database,
                plan.manifest.format,
                &prelude,
            )
            .await?;
            let what = format!("psql ({})", d.database);
            let loaded =
                stream_object(client, s3cfg, &plan.manifest, &d.object, &what, &mut s, progress)
                    .await;
            sessions.push(s);
            loaded?;
            tracing::info!(database = %d.database, bytes = d.object.size, "Database loaded; commit waits for the others.");
        }
        // Every database loaded and verified: commit them all.
        let mut first_err = None;
        for s in sessions.drain(..) {
            if first_err.is_some() {
                s.abort().await;
                continue;
            }
            if let Err(e) = s.commit().await {
                first_err = Some(e);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
    .await;

    if let Err(e) = result {
        let mut why = Vec::new();
        for s in sessions.drain(..) {
            let out = s.abort().await;
            if !out.is_empty() {
                why.push(out);
            }
        }
        undo(&access, &created_dbs, &created_roles).await;
        let detail = if why.is_empty() {
            String::new()
        } else {
            format!("; psql said: {}", why.join("; "))
        };
        return Err(match e {
            RestoreError::Failed(m) => RestoreError::Failed(format!(
                "{m}{detail}. Nothing was changed in {}",
                plan.target
            )),
            other => other,
        });
    }
    Ok(Outcome {
        backup_id: plan.manifest.backup_id.to_string(),
        source: plan.manifest.target.clone(),
        target: plan.target.clone(),
        databases: plan.databases.iter().map(|d| d.database.clone()).collect(),
        roles_created: created_roles,
        skipped,
        bytes: plan.databases.iter().map(|d| d.object.size).sum::<u64>()
            + plan.globals.as_ref().map(|g| g.size).unwrap_or(0),
        duration_seconds: started.elapsed().as_secs_f64(),
    })
}

/// Drops what a failed restore created: its databases, then its roles (which own nothing any
/// more once the databases' transactions rolled back).
async fn undo(access: &Access, dbs: &[String], roles: &[String]) {
    for db in dbs {
        if let Err(e) = access
            .query(
                "postgres",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(db)),
            )
            .await
        {
            tracing::warn!(database = %db, "Could not drop the database the failed restore created: {e}");
        }
    }
    for role in roles.iter().rev() {
        if let Err(e) = access
            .query(
                "postgres",
                &format!("DROP ROLE IF EXISTS {}", quote_ident(role)),
            )
            .await
        {
            tracing::warn!(role = %role, "Could not drop the role the failed restore created: {e}");
        }
    }
}

/// Reads the globals object whole, verifies it and keeps what applies to this server.
async fn globals_script(
    client: &Client,
    s3cfg: &S3Config,
    plan: &Plan,
    g: &Object,
    access: &Access,
) -> Result<(String, Vec<String>, Vec<String>), RestoreError> {
    if g.size > GLOBALS_LIMIT {
        return Err(RestoreError::Failed(format!(
            "{} is {} bytes; globals larger than {GLOBALS_LIMIT} are not restored automatically",
            g.name, g.size
        )));
    }
    let m = &plan.manifest;
    let compression = fetch::compression_of(m).map_err(RestoreError::Failed)?;
    let body = fetch::open(client, s3cfg, m, g)
        .await
        .map_err(|e| RestoreError::Failed(e.to_string()))?;
    let (checked, tallies) = Checked::new(body);
    let mut text = String::new();
    let read = fetch::decompress(checked, compression)
        .read_to_string(&mut text)
        .await;
    tallies
        .verdict(g)
        .map_err(|e| RestoreError::Failed(format!("{e}: nothing was restored")))?;
    read.map_err(|e| RestoreError::Failed(format!("reading {} failed: {e}", g.name)))?;
    let existing: BTreeSet<String> = access
        .query("postgres", "SELECT rolname FROM pg_roles")
        .await?
        .into_iter()
        .collect();
    let (script, created, skipped) = filter_globals(&text, &existing);
    for s in &skipped {
        tracing::warn!("Skipped from the globals: {s} (create tablespaces by hand)");
    }
    Ok((script, created, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("latest", BackupRef::Latest)]
    #[case("20261120T030000Z-logical", BackupRef::Id("20261120T030000Z-logical".parse().unwrap()))]
    #[case("shop/db/20261120T030000Z-logical", BackupRef::Key { dir: "shop/db".into(), id: "20261120T030000Z-logical".parse().unwrap(), object: None })]
    #[case("shop/db/20261120T030000Z-logical/", BackupRef::Key { dir: "shop/db".into(), id: "20261120T030000Z-logical".parse().unwrap(), object: None })]
    #[case("prod/shop/db/20261120T030000Z-logical/manifest.json", BackupRef::Key { dir: "prod/shop/db".into(), id: "20261120T030000Z-logical".parse().unwrap(), object: None })]
    #[case("shop/db/20261120T030000Z-logical/app.dump.zst", BackupRef::Key { dir: "shop/db".into(), id: "20261120T030000Z-logical".parse().unwrap(), object: Some("app.dump.zst".into()) })]
    #[case("s3://pgbackup/shop/db/20261120T030000Z-logical/app.dump.zst", BackupRef::Key { dir: "shop/db".into(), id: "20261120T030000Z-logical".parse().unwrap(), object: Some("app.dump.zst".into()) })]
    fn backup_refs(#[case] s: &str, #[case] expected: BackupRef) {
        assert_eq!(s.parse::<BackupRef>().unwrap(), expected);
    }

    #[rstest]
    #[case("")]
    #[case("yesterday")]
    #[case("shop/db/not-an-id/app.dump.zst")]
    #[case("s3://bucket-only")]
    fn bad_backup_refs(#[case] s: &str) {
        let e = s.parse::<BackupRef>().unwrap_err();
        assert!(e.contains("pgctl list"), "{e}");
    }

    const GLOBALS: &str = r#"--
-- PostgreSQL database cluster dump
--

SET default_transaction_read_only = off;

CREATE ROLE app;
ALTER ROLE app WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB LOGIN NOREPLICATION NOBYPASSRLS PASSWORD 'SCRAM-SHA-256$4096:x';
CREATE ROLE postgres;
ALTER ROLE postgres WITH SUPERUSER INHERIT CREATEROLE CREATEDB LOGIN REPLICATION BYPASSRLS PASSWORD 'SCRAM-SHA-256$4096:y';
CREATE ROLE "Report ""Reader""";
ALTER ROLE "Report ""Reader""" WITH NOLOGIN;
COMMENT ON ROLE "Report ""Reader""" IS 'reads';
ALTER ROLE app SET search_path TO 'app';
GRANT "Report ""Reader""" TO app GRANTED BY postgres;
CREATE TABLESPACE fast OWNER postgres LOCATION '/mnt/fast';
"#;

    #[test]
    fn globals_create_missing_roles_only() {
        let existing = BTreeSet::from(["postgres".to_string()]);
        let (script, created, skipped) = filter_globals(GLOBALS, &existing);
        assert_eq!(created, ["app", "Report \"Reader\""]);
        assert!(!script.contains("ALTER ROLE postgres"), "{script}");
        assert!(!script.contains("CREATE ROLE postgres"), "{script}");
        assert!(script.contains("CREATE ROLE app;"));
        assert!(script.contains("ALTER ROLE app SET search_path"));
        assert!(script.contains("COMMENT ON ROLE \"Report \"\"Reader\"\"\""));
        assert!(script.contains("GRANT \"Report \"\"Reader\"\"\" TO app"));
        assert!(!script.contains("TABLESPACE"));
        assert_eq!(skipped.len(), 1);
        // An existing role keeps its password and settings.
        let all = BTreeSet::from(["postgres".to_string(), "app".to_string()]);
        let (script, created, _) = filter_globals(GLOBALS, &all);
        assert_eq!(created, ["Report \"Reader\""]);
        assert!(!script.contains("ALTER ROLE app"), "{script}");
    }

    #[rstest]
    #[case("app;", Some("app"))]
    #[case("\"a\"\"b\" WITH LOGIN;", Some("a\"b"))]
    #[case("\"unterminated", None)]
    #[case(";", None)]
    fn idents(#[case] s: &str, #[case] name: Option<&str>) {
        assert_eq!(parse_ident(s).map(|(n, _)| n), name.map(String::from));
    }

    #[test]
    fn clean_sql_recreates_public_per_version() {
        assert!(clean_sql(17).contains("AUTHORIZATION pg_database_owner"));
        assert!(clean_sql(14).contains("GRANT ALL ON SCHEMA public TO PUBLIC"));
        assert!(clean_sql(17).contains("DROP SCHEMA %I CASCADE"));
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
