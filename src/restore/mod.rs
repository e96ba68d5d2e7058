//! Logical restore, all or nothing (README "Restoring"): the store → SHA-256 + size → decompression →
//! (`pg_restore --create -f -` for custom archives) → [`sql::Rewriter`] → `psql` in the target.
//!
//! Roles are restored first, in one transaction. Then every database of the backup is loaded
//! into a new, temporary database, with its owner, ACL, comment and settings; nothing the target
//! holds is touched while that runs. Only when every database has loaded and every object's
//! size and checksum matched the manifest does one transaction rename each database being
//! replaced out of the way and give each loaded database its name. Either every database is
//! replaced or none is: any failure before that commit — a checksum, a statement, the
//! connection, `pgctl` itself being killed — leaves the target's databases as they were, and
//! the temporary databases and created roles are dropped. The replaced databases are dropped
//! after the commit.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

use crate::config::Defaults;
use crate::discovery::Target;
use crate::engine::docker::{Container, DockerClient, DockerError, ExecExit, ExecInput};
use crate::engine::pg::{self, Access, PgError, PgStream};
use crate::model::layout::{self, BackupId, Kind};
use crate::model::manifest::{Manifest, Object, ObjectKind};
use crate::model::{Format, TargetId};
use crate::pipeline::fetch::{self, Checked, Damage};
use crate::store::Store;
use crate::store::catalog;

pub mod physical;
pub mod sql;

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
                "{s:?} names no backup: expected `latest`, a backup id (20261120T030000.123Z-4f2a9c-logical) or a key (project/service/<backup id>[/object]); see `pgctl list`"
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

/// An `s3://bucket/…` reference must name the configured bucket: pgbackup reads only
/// `S3_BUCKET`, and silently reading another key there would restore the wrong thing.
pub fn check_bucket_of(reference: &str, location: &str) -> Result<(), String> {
    let Some(b) = reference
        .trim()
        .strip_prefix("s3://")
        .and_then(|r| r.split('/').next())
    else {
        return Ok(());
    };
    match location.strip_prefix("s3://") {
        Some(bucket) if b == bucket => Ok(()),
        Some(bucket) => Err(format!(
            "{reference:?} is in bucket {b:?}, but pgbackup reads S3_BUCKET={bucket:?}: set S3_BUCKET (and its credentials) to that bucket, or copy the backup into this one"
        )),
        None => Err(format!(
            "{reference:?} is in bucket {b:?}, but pgbackup reads the directory {location} (PGBACKUP_DESTINATION): name the backup by its key or id"
        )),
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
    /// The sidecar's own pg_restore, asked only when the target's cannot read the archive.
    pub sidecar_tool: Option<String>,
    /// Custom archives are turned into SQL by the sidecar's pg_restore (see `check`).
    pub convert_in_sidecar: bool,
    pub globals: Option<Object>,
    pub databases: Vec<DbPlan>,
    pub clean: bool,
    /// Temporary databases of earlier restores that were interrupted.
    /// What earlier restores left on this server.
    pub leftovers: Leftovers,
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
            crate::app::table::human_bytes(m.size()),
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
        if self.convert_in_sidecar {
            writeln!(
                f,
                "  archives   read by the sidecar's {} (the target has {})",
                self.sidecar_tool.as_deref().unwrap_or("pg_restore"),
                self.restore_tool
            )?;
        }
        for d in &self.databases {
            let what = match (d.exists, d.objects) {
                (false, _) => "created".to_string(),
                (true, 0) => "exists, empty: replaced".to_string(),
                (true, n) if self.clean => format!("exists, {n} objects: replaced (--clean)"),
                (true, n) => format!("exists, {n} objects"),
            };
            writeln!(
                f,
                "  database   {:<20} from {} ({what})",
                d.database, d.object.name
            )?;
        }
        writeln!(
            f,
            "  method     each database is loaded into a new database; all take their names in one transaction at the end"
        )?;
        for db in &self.leftovers.abandoned_databases {
            writeln!(
                f,
                "  cleanup    {db}: the temporary database of an interrupted restore (no session of it is alive), dropped first"
            )?;
        }
        for role in &self.leftovers.abandoned_roles {
            writeln!(
                f,
                "  cleanup    role {role}: created by an interrupted restore that never completed, dropped first"
            )?;
        }
        for db in &self.leftovers.replaced {
            writeln!(
                f,
                "  warning    {db} holds a database an earlier restore replaced and could not drop: drop it when you no longer need it (DROP DATABASE {})",
                quote_ident(db)
            )?;
        }
        for run in &self.leftovers.running {
            writeln!(
                f,
                "  warning    another restore (run {run}) is running on this server now"
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
    let sidecar_major = plan
        .sidecar_tool
        .as_deref()
        .and_then(pg::major_of)
        .unwrap_or(0);
    if plan.manifest.format == Format::Custom
        && tool_major < dump_major
        && sidecar_major < dump_major
    {
        return Err(RestoreError::Refused(format!(
            "backup {} was written by {} but {} has {} and the sidecar {}, neither of which can read it: nothing was changed. Use a pgbackup image with Postgres {dump_major} client tools, or restore into a server with Postgres {dump_major} or newer",
            plan.manifest.backup_id,
            plan.manifest.postgres.dump_tool,
            plan.target,
            plan.restore_tool,
            plan.sidecar_tool.as_deref().unwrap_or("has no pg_restore")
        )));
    }
    if plan.server_major < plan.manifest.postgres.major {
        return Err(RestoreError::Refused(format!(
            "backup {} is of a Postgres {} server but {} runs Postgres {}: nothing was changed. A logical backup restores into the same major or a newer one",
            plan.manifest.backup_id, plan.manifest.postgres.major, plan.target, plan.server_major
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
            "{} already holds data in {}: nothing was changed. Pass --clean to replace it (each database is replaced as a whole by the backup's, after every database of the backup has loaded; on any failure the old data stays), or restore into another target with --to",
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
        let own = docker.own_project().map(String::from);
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
        [] => Err(RestoreError::Usage(outside_scope(docker, name).await.unwrap_or_else(|| format!(
            "no running container is named {name:?} (as project/service, service or container name): start it, or check `docker compose ps`"
        )))),
        many => Err(RestoreError::Usage(format!(
            "{name:?} is ambiguous: {}; name it as project/service",
            many.iter()
                .map(|(t, c)| t.map(|t| t.to_string()).unwrap_or_else(|| c.name.clone()))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Refuses a restore target that is not a Postgres server (the sidecar, Garage, an app): the
/// official image and those built on it set `PG_MAJOR`/`PGDATA`, others (Bitnami) `POSTGRESQL_*`.
pub fn ensure_postgres(c: &Container) -> Result<(), RestoreError> {
    let looks = c.env.keys().any(|k| {
        matches!(k.as_str(), "PG_MAJOR" | "PGDATA" | "PG_VERSION") || k.starts_with("POSTGRES")
    });
    if looks {
        Ok(())
    } else {
        Err(RestoreError::Usage(format!(
            "{} is not a Postgres container (image {}: no PG_MAJOR, PGDATA or POSTGRES_* in its environment): pass the Postgres service with --to",
            c.name, c.image
        )))
    }
}

/// Explains a name that matches only containers outside the scope (another compose project).
async fn outside_scope(docker: &DockerClient, name: &str) -> Option<String> {
    let all = docker.list_running_anywhere(&[]).await.ok()?;
    let found: Vec<String> = all
        .iter()
        .filter(|c| !c.in_scope)
        .filter(|c| {
            TargetId::of(&c.labels, &c.name)
                .is_some_and(|t| t.to_string() == name || t.service == name)
                || c.name == name
                || c.id == name
        })
        .map(|c| {
            TargetId::of(&c.labels, &c.name)
                .map(|t| t.to_string())
                .unwrap_or_else(|| c.name.clone())
        })
        .collect();
    (!found.is_empty()).then(|| {
        format!(
            "{name:?} is {}, outside this sidecar's scope ({}): pgbackup acts only on its own compose project unless PGBACKUP_SCOPE names others (or host)",
            found.join(", "),
            docker.scope()
        )
    })
}

/// The folder holding a target's backups and the target's identity: from its
/// `pgbackup.prefix` when it runs with labels, else `project/service` as named.
async fn source_dir(
    docker: &DockerClient,
    store: &dyn Store,
    defaults: &Defaults,
    name: &str,
) -> Result<(String, String), RestoreError> {
    if let Ok(c) = find_container(docker, name, None).await {
        if let Some(t) = Target::from_container(&c, defaults)
            && let Some(spec) = t.settings()
        {
            return Ok((
                layout::target_dir(store.prefix(), &spec.prefix),
                t.target.to_string(),
            ));
        }
        if let Some(t) = TargetId::of(&c.labels, &c.name) {
            return Ok((
                layout::target_dir(store.prefix(), &t.to_string()),
                t.to_string(),
            ));
        }
    }
    Ok((layout::target_dir(store.prefix(), name), name.to_string()))
}

async fn by_key(store: &dyn Store, dir: &str, id: &BackupId) -> Result<Manifest, RestoreError> {
    let key = layout::join(&[dir, &id.to_string(), layout::MANIFEST]);
    let found = store
        .head(&key)
        .await
        .map(|s| s.is_some())
        .map_err(|e| RestoreError::Failed(e.to_string()))?;
    if !found {
        return Err(RestoreError::Usage(format!(
            "{dir}/{id} is not a committed backup (no manifest.json): see `pgctl list`"
        )));
    }
    catalog::read_manifest(store, &key)
        .await
        .map_err(RestoreError::Failed)
}

/// Finds the manifest `req.backup` names. Only committed backups are ever found.
pub async fn resolve_backup(
    docker: &DockerClient,
    store: &dyn Store,
    defaults: &Defaults,
    req: &Request,
) -> Result<(Manifest, Option<String>), RestoreError> {
    let s3err = |e: crate::store::StoreError| RestoreError::Failed(e.to_string());
    match &req.backup {
        BackupRef::Latest => {
            let source = req.from.as_deref().or(req.to.as_deref()).ok_or_else(|| {
                RestoreError::Usage(
                    "`latest` needs a target: pass --from TARGET (whose backups) or --to TARGET (restores its own latest)".into(),
                )
            })?;
            let (dir, id) = source_dir(docker, store, defaults, source).await?;
            let m = catalog::latest(store, &dir, req.kind, Some(&id))
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
        BackupRef::Key { dir, id, object } => Ok((by_key(store, dir, id).await?, object.clone())),
        BackupRef::Id(id) => {
            if let Some(from) = &req.from {
                let (dir, _) = source_dir(docker, store, defaults, from).await?;
                return Ok((by_key(store, &dir, id).await?, None));
            }
            let mut keys = catalog::manifest_keys(store, None).await.map_err(s3err)?;
            keys.retain(|(k, _)| k == id);
            let (found, problems) = catalog::read_manifests(store, &keys).await;
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

use sql::quote_ident;

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
            "{} is a physical base backup: restore it with `pgctl restore … --physical` (into a new volume the service is switched onto), or unpack base.tar into an empty data directory by hand",
            manifest.backup_id
        )));
    }
    let to = req.to.clone().unwrap_or_else(|| manifest.target.clone());
    let source_project = manifest.target.split_once('/').map(|(p, _)| p.to_string());
    let container = find_container(docker, &to, source_project.as_deref()).await?;
    ensure_postgres(&container)?;
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
    if let Some(name) = &object {
        let Some(o) = manifest.objects.iter().find(|o| &o.name == name) else {
            return Err(RestoreError::Usage(format!(
                "backup {} has no object {name:?}; it holds {}",
                manifest.backup_id,
                names(&manifest)
            )));
        };
        if let (Some(db), Some(of)) = (&req.db, &o.database)
            && db != of
        {
            return Err(RestoreError::Usage(format!(
                "{name} holds database {of:?} but --db asks for {db:?}: name the backup folder with --db {db}, or the object without --db"
            )));
        }
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
    let dump_major = pg::major_of(&manifest.postgres.dump_tool).unwrap_or(0);
    let target_reads = pg::major_of(&restore_tool).unwrap_or(0) >= dump_major;
    let sidecar_tool = if manifest.format == Format::Custom && !target_reads {
        pg::local_version("pg_restore").await.ok()
    } else {
        None
    };
    let convert_in_sidecar = manifest.format == Format::Custom
        && !target_reads
        && sidecar_tool
            .as_deref()
            .and_then(pg::major_of)
            .is_some_and(|m| m >= dump_major);
    let leftovers = leftovers_of(&access).await?;
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
        sidecar_tool,
        convert_in_sidecar,
        globals,
        databases,
        clean: req.clean,
        leftovers,
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
        if let Some(stmt) = granted_by_fallback(line) {
            out.push_str(&stmt);
            continue;
        }
        // psql meta-commands (\restrict, \connect) and everything else pass through.
        out.push_str(line);
        out.push('\n');
    }
    (out, created, skipped)
}

/// `GRANT role TO member … GRANTED BY grantor;` as pg_dumpall 16+ writes every membership. The
/// grantor may not exist on the target (another superuser name) or may not hold ADMIN OPTION
/// there (a role the restore created as superuser): then the membership is granted by the
/// restoring superuser instead of failing the whole restore, with a notice.
fn granted_by_fallback(line: &str) -> Option<String> {
    let stmt = line.strip_suffix(';')?;
    if !stmt.starts_with("GRANT ") {
        return None;
    }
    let at = stmt.rfind(" GRANTED BY ")?;
    let without = &stmt[..at];
    Some(format!(
        "DO $pgbackup$\nBEGIN\n  EXECUTE {};\nEXCEPTION WHEN insufficient_privilege OR undefined_object THEN\n  RAISE NOTICE 'pgbackup: % - granted by the restoring role instead', SQLERRM;\n  EXECUTE {};\nEND\n$pgbackup$;\n",
        sql::quote_literal(stmt),
        sql::quote_literal(without)
    ))
}

/// Printed by psql after the last statement of a load ran: every statement before it succeeded.
const LOADED: &str = "pgbackup:loaded";

/// One `psql` session inside the target, reading SQL from stdin (`ON_ERROR_STOP`).
struct Psql {
    input: ExecInput,
    output: JoinHandle<Result<(ExecExit, String), DockerError>>,
    what: String,
}

impl Psql {
    /// Starts psql as `user` on `database` in `c`. `what` names it in errors.
    async fn start(
        docker: &DockerClient,
        c: &Container,
        user: &str,
        database: &str,
        what: &str,
    ) -> Result<Psql, RestoreError> {
        let cmd = pg::psql_script_argv(user, database);
        let (mut stream, input) = docker.exec_with_stdin(&c.id, &cmd, &[], None).await?;
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
        Ok(Psql {
            input,
            output,
            what: what.to_string(),
        })
    }

    /// Sends `last`, then a marker; ends the input and checks that psql ran everything.
    async fn finish(mut self, last: &str) -> Result<(), RestoreError> {
        let sent = async {
            self.input.write_all(last.as_bytes()).await?;
            self.input
                .write_all(format!("\n\\echo {LOADED}\n").as_bytes())
                .await?;
            self.input.flush().await?;
            self.input.shutdown().await
        }
        .await;
        drop(self.input);
        let (exit, out) = self
            .output
            .await
            .map_err(|e| RestoreError::Failed(e.to_string()))??;
        if exit.code == 0 && out.contains(LOADED) {
            return Ok(());
        }
        Err(RestoreError::Failed(format!(
            "{} failed (psql exit code {}): {}{}",
            self.what,
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

    /// Ends the input early; returns psql's error output, if it failed by itself.
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
}

/// Writes SQL through the [`sql::Rewriter`] into psql.
struct Rewriting<'a> {
    rewriter: sql::Rewriter,
    input: &'a mut ExecInput,
    buf: Vec<u8>,
}

impl Rewriting<'_> {
    async fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.buf.clear();
        self.rewriter
            .feed(chunk, &mut self.buf)
            .map_err(std::io::Error::other)?;
        self.input.write_all(&self.buf).await
    }

    /// The rest of the rewritten SQL (see [`sql::Rewriter::finish`]).
    fn finish(&mut self) -> Result<String, RestoreError> {
        let mut out = Vec::new();
        self.rewriter
            .finish(&mut out)
            .map_err(RestoreError::Failed)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

impl ChunkSink for Rewriting<'_> {
    async fn send(&mut self, chunk: Bytes) -> std::io::Result<()> {
        self.write(&chunk).await
    }
}

/// The stdin of a converter (`pg_restore -f -`): in the target, or in the sidecar.
struct Raw(std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>);

impl ChunkSink for Raw {
    async fn send(&mut self, chunk: Bytes) -> std::io::Result<()> {
        self.0.write_all(&chunk).await
    }
}

/// `pg_restore --create -f -`: turns a custom archive into the SQL psql loads.
struct Converter {
    input: Raw,
    output: PgStream,
    what: String,
}

const CONVERT: [&str; 3] = ["--create", "--file=-", "--exit-on-error"];

impl Converter {
    /// In the target, with its own pg_restore.
    async fn in_target(docker: &DockerClient, c: &Container) -> Result<Converter, RestoreError> {
        let mut cmd = vec!["pg_restore".to_string()];
        cmd.extend(CONVERT.map(String::from));
        let (stream, input) = docker.exec_with_stdin(&c.id, &cmd, &[], None).await?;
        Ok(Converter {
            input: Raw(input),
            output: PgStream::Exec(stream),
            what: format!("pg_restore in {}", c.name),
        })
    }

    /// In the sidecar, whose pg_restore reads archives the target's is too old for.
    fn in_sidecar() -> Result<Converter, RestoreError> {
        let (output, input) = pg::local_with_stdin("pg_restore", &CONVERT.map(String::from))?;
        Ok(Converter {
            input: Raw(Box::pin(input)),
            output,
            what: "pg_restore in the sidecar".into(),
        })
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

/// Streams one object of `m` (S3 → size + SHA-256 → decompression) into `sink`, then checks the
/// manifest's size and checksum. `what` names the destination in errors.
pub async fn stream_object(
    store: &dyn Store,
    m: &Manifest,
    object: &Object,
    what: &str,
    sink: &mut impl ChunkSink,
    progress: &dyn Progress,
) -> Result<(), RestoreError> {
    let compression = fetch::compression_of(m).map_err(RestoreError::Failed)?;
    let body = fetch::open(store, m, object)
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
    /// Databases whose previous version could not be dropped after the swap (left, renamed).
    pub left_over: Vec<String>,
    pub bytes: u64,
    pub duration_seconds: f64,
}

/// Names of one restore run's temporary databases: where each database is loaded
/// (`pgbackup_restore_<run>_<n>`) and where the database it replaces goes during the swap
/// (`pgbackup_replaced_<run>_<n>`). Plain lower-case ASCII: never needs quoting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Temporary {
    pub load: String,
    pub replaced: String,
}

pub const LOAD_PREFIX: &str = "pgbackup_restore_";
pub const REPLACED_PREFIX: &str = "pgbackup_replaced_";

pub fn temporary(run: &str, n: usize) -> Temporary {
    Temporary {
        load: format!("{LOAD_PREFIX}{run}_{n}"),
        replaced: format!("{REPLACED_PREFIX}{run}_{n}"),
    }
}

/// Marks a role created by run `run` (see [`ROLE_MARK`]). Setting a custom parameter on a
/// role needs a superuser on Postgres 15+; without one the role stays unmarked and an
/// interruption leaves it to be dropped by hand, as before.
fn mark_role_sql(role: &str, run: &str) -> String {
    let stmt = sql::quote_literal(&format!(
        "ALTER ROLE {} SET {ROLE_MARK} = '{run}'",
        sql::quote_ident(role)
    ));
    format!(
        "DO $pgbackup$ BEGIN EXECUTE {stmt}; EXCEPTION WHEN insufficient_privilege THEN NULL; END $pgbackup$;\n"
    )
}

/// A short id for one restore run: unique enough among runs on one server.
fn run_id() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{:08x}",
        (t.as_nanos() as u64 ^ ((std::process::id() as u64) << 32)) as u32
    )
}

/// Marks the session that is alive for as long as a restore runs (`application_name`), so the
/// next restore can tell an interrupted run (no such session) from a running one.
fn liveness_name(run: &str) -> String {
    format!("{LOAD_PREFIX}{run}")
}

/// The per-role setting that marks a role created by a restore run until its swap commits (the
/// marks are removed in the swap's transaction): a role still marked by a run with no live
/// session was created by a restore that never completed.
pub const ROLE_MARK: &str = "pgbackup.restore_run";

/// What earlier restores left on a server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leftovers {
    /// Load databases of runs with no live session: dropped by the next restore.
    pub abandoned_databases: Vec<String>,
    /// Roles still marked by runs with no live session: dropped by the next restore.
    pub abandoned_roles: Vec<String>,
    /// Databases a completed restore replaced but could not drop: the user's old data, reported.
    pub replaced: Vec<String>,
    /// Runs alive now.
    pub running: Vec<String>,
}

/// The run id inside a load database's name (`pgbackup_restore_<run>_<n>`).
fn run_of(load: &str) -> Option<&str> {
    load.strip_prefix(LOAD_PREFIX)?
        .rsplit_once('_')
        .map(|(r, _)| r)
}

/// Reads what earlier restores left and which runs are alive. Pure once the rows are read
/// ([`classify_leftovers`]).
async fn leftovers_of(access: &Access) -> Result<Leftovers, RestoreError> {
    let rows = access
        .query(
            "postgres",
            &format!(
                "SELECT 'db|' || datname FROM pg_database WHERE starts_with(datname, '{LOAD_PREFIX}') OR starts_with(datname, '{REPLACED_PREFIX}')
                 UNION ALL SELECT 'live|' || application_name FROM pg_stat_activity WHERE starts_with(application_name, '{LOAD_PREFIX}')
                 UNION ALL SELECT 'role|' || r.rolname || '|' || substr(c, length('{ROLE_MARK}=') + 1)
                   FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole, unnest(s.setconfig) c
                   WHERE s.setdatabase = 0 AND starts_with(c, '{ROLE_MARK}=')
                 ORDER BY 1"
            ),
        )
        .await?;
    Ok(classify_leftovers(&rows))
}

/// Sorts rows of `db|name`, `live|application_name`, `role|name|run` into [`Leftovers`].
pub fn classify_leftovers(rows: &[String]) -> Leftovers {
    let live: BTreeSet<&str> = rows
        .iter()
        .filter_map(|r| r.strip_prefix("live|")?.strip_prefix(LOAD_PREFIX))
        .collect();
    let mut out = Leftovers {
        running: live.iter().map(|r| r.to_string()).collect(),
        ..Default::default()
    };
    for r in rows {
        if let Some(db) = r.strip_prefix("db|") {
            match run_of(db) {
                Some(run) if live.contains(run) => {}
                Some(_) => out.abandoned_databases.push(db.to_string()),
                None => out.replaced.push(db.to_string()),
            }
        } else if let Some(rest) = r.strip_prefix("role|")
            && let Some((role, run)) = rest.rsplit_once('|')
            && !live.contains(run)
        {
            out.abandoned_roles.push(role.to_string());
        }
    }
    out
}

/// Drops what interrupted restores left: their load databases first (objects owned by their
/// roles live there), then the roles. Failures are logged; nothing else depends on them.
async fn clean_abandoned(access: &Access, maint: &str, server_major: u32, l: &Leftovers) {
    for db in &l.abandoned_databases {
        match drop_database(access, maint, db, server_major).await {
            Ok(()) => {
                tracing::info!(database = %db, "Dropped the temporary database of an interrupted restore.")
            }
            Err(e) => {
                tracing::warn!(database = %db, "Could not drop the temporary database of an interrupted restore: {e}")
            }
        }
    }
    for role in &l.abandoned_roles {
        let q = format!("DROP ROLE IF EXISTS {}", sql::quote_ident(role));
        match access.query(maint, &q).await {
            Ok(_) => tracing::info!(role = %role, "Dropped a role an interrupted restore created."),
            Err(e) => {
                tracing::warn!(role = %role, "Could not drop a role an interrupted restore created: {e}")
            }
        }
    }
}

/// The database psql stays on while others are created, renamed and dropped: `postgres`,
/// unless the restore replaces it.
fn maintenance_db(plan: &Plan) -> &'static str {
    if plan.databases.iter().any(|d| d.database == "postgres") {
        "template1"
    } else {
        "postgres"
    }
}

/// The swap, one transaction: every database being replaced is renamed out of the way (its
/// sessions ended first), every loaded database takes its name. Either all of it commits or
/// none of it does.
pub fn swap_sql(pairs: &[(&DbPlan, &Temporary)], also: &[String]) -> String {
    let mut s = String::from("BEGIN;\n");
    for stmt in also {
        s.push_str(stmt);
        s.push('\n');
    }
    for (d, t) in pairs {
        if d.exists {
            let name = sql::quote_literal(&d.database);
            let rename = sql::quote_literal(&format!(
                "ALTER DATABASE {} RENAME TO {}",
                sql::quote_ident(&d.database),
                t.replaced
            ));
            // Sessions on the database are ended first; one that reconnects before the rename
            // makes it fail with object_in_use (after the server's own 5 s wait): end it, try again.
            s.push_str(&format!(
                "DO $pgbackup$
DECLARE tries int := 0;
BEGIN
  LOOP
    PERFORM pg_terminate_backend(pid) FROM pg_stat_activity
      WHERE datname = {name} AND pid <> pg_backend_pid();
    BEGIN
      EXECUTE {rename};
      EXIT;
    EXCEPTION WHEN object_in_use THEN
      tries := tries + 1;
      IF tries >= 5 THEN RAISE; END IF;
      PERFORM pg_sleep(0.2);
    END;
  END LOOP;
END
$pgbackup$;
"
            ));
        }
        s.push_str(&format!(
            "ALTER DATABASE {} RENAME TO {};\n",
            t.load,
            sql::quote_ident(&d.database)
        ));
    }
    s.push_str("COMMIT;\n");
    s
}

/// Runs the plan. On any error the target is left as it was before (and the error says so only
/// when that was checked).
pub async fn execute(
    docker: &DockerClient,
    store: &dyn Store,
    plan: &Plan,
    progress: &dyn Progress,
) -> Result<Outcome, RestoreError> {
    check(plan)?;
    let started = std::time::Instant::now();
    let access = exec_access(docker, &plan.container, &plan.user);
    let maint = maintenance_db(plan);
    let run = run_id();
    let temps: Vec<Temporary> = (1..=plan.databases.len())
        .map(|n| temporary(&run, n))
        .collect();
    let mut created_roles = Vec::new();
    let mut skipped = Vec::new();
    // Alive for as long as this run: the next restore knows it from an interrupted one.
    let alive = pg::Held::open(
        docker,
        &plan.container.id,
        &plan.user,
        maint,
        &format!("SET application_name = '{}';", liveness_name(&run)),
    )
    .await
    .map_err(|e| {
        RestoreError::Failed(format!(
            "cannot open the restore's session: {e}. Nothing was changed"
        ))
    })?;
    clean_abandoned(&access, maint, plan.server_major, &plan.leftovers).await;

    let loaded = async {
        if let Some(g) = &plan.globals {
            let (script, created, skip) = globals_script(store, plan, g, &access).await?;
            skipped = skip;
            let what = format!("restoring roles from {}", g.name);
            let mut s = Psql::start(docker, &plan.container, &plan.user, maint, &what).await?;
            // One transaction: every role is created, or none is. Roles commit first: the
            // databases' owners and grants need them. Each new role is marked with this run
            // until the swap commits, so a crash in between cannot leave it unnoticed.
            let marks: String = created.iter().map(|r| mark_role_sql(r, &run)).collect();
            let body = format!("BEGIN;\n{script}\n{marks}COMMIT;\n");
            if let Err(e) = s.input.write_all(body.as_bytes()).await {
                let said = s.abort().await;
                return Err(RestoreError::Failed(format!("{what} failed: {e} {said}")));
            }
            s.finish("").await?;
            created_roles = created;
        }
        for (d, t) in plan.databases.iter().zip(&temps) {
            load(docker, store, plan, d, t, maint, progress).await?;
            tracing::info!(database = %d.database, temporary = %t.load, bytes = d.object.size,
                "Database loaded; it takes its name when every database of the backup is loaded.");
        }
        Ok(())
    }
    .await;

    let swapped = match loaded {
        Ok(()) => {
            let pairs: Vec<(&DbPlan, &Temporary)> = plan.databases.iter().zip(&temps).collect();
            let unmark: Vec<String> = created_roles
                .iter()
                .map(|r| format!("ALTER ROLE {} RESET {ROLE_MARK};", sql::quote_ident(r)))
                .collect();
            access
                .query(maint, &swap_sql(&pairs, &unmark))
                .await
                .map_err(|e| {
                    RestoreError::Failed(format!("swapping the restored databases in failed: {e}"))
                })
        }
        Err(e) => Err(e),
    };
    if let Err(e) = swapped {
        let state = undo(&access, plan, maint, &run, &temps, &created_roles).await;
        alive.release().await;
        return Err(match e {
            RestoreError::Failed(m) => RestoreError::Failed(format!("{m}. {state}")),
            other => other,
        });
    }
    // Committed. What was replaced is dropped now; a failure here loses nothing.
    let mut left_over = Vec::new();
    for (d, t) in plan.databases.iter().zip(&temps) {
        if d.exists
            && let Err(e) = drop_database(&access, maint, &t.replaced, plan.server_major).await
        {
            tracing::warn!(database = %t.replaced, "The replaced database could not be dropped: {e}");
            left_over.push(t.replaced.clone());
        }
    }
    alive.release().await;
    Ok(Outcome {
        backup_id: plan.manifest.backup_id.to_string(),
        source: plan.manifest.target.clone(),
        target: plan.target.clone(),
        databases: plan.databases.iter().map(|d| d.database.clone()).collect(),
        roles_created: created_roles,
        skipped,
        left_over,
        bytes: plan.databases.iter().map(|d| d.object.size).sum::<u64>()
            + plan.globals.as_ref().map(|g| g.size).unwrap_or(0),
        duration_seconds: started.elapsed().as_secs_f64(),
    })
}

/// Loads one database into its temporary database: SQL (converted from a custom archive by
/// pg_restore, in the target or in the sidecar) → [`sql::Rewriter`] → psql in the target.
#[allow(clippy::too_many_arguments)]
async fn load(
    docker: &DockerClient,
    store: &dyn Store,
    plan: &Plan,
    d: &DbPlan,
    t: &Temporary,
    maint: &str,
    progress: &dyn Progress,
) -> Result<(), RestoreError> {
    let what = format!("restoring database {:?} from {}", d.database, d.object.name);
    let mut psql = Psql::start(docker, &plan.container, &plan.user, maint, &what).await?;
    let mut sink = Rewriting {
        rewriter: sql::Rewriter::new(sql::Rewrite {
            from: d.database.clone(),
            to: t.load.clone(),
            drop_transaction_timeout: plan.server_major < 17,
        }),
        input: &mut psql.input,
        buf: Vec::new(),
    };
    let label = format!("{} ({})", d.object.name, d.database);
    let streamed = match plan.manifest.format {
        Format::Plain | Format::Tar => {
            stream_object(
                store,
                &plan.manifest,
                &d.object,
                &label,
                &mut sink,
                progress,
            )
            .await
        }
        Format::Custom => {
            let mut conv = if plan.convert_in_sidecar {
                Converter::in_sidecar()?
            } else {
                Converter::in_target(docker, &plan.container).await?
            };
            let feed = async {
                let r = stream_object(
                    store,
                    &plan.manifest,
                    &d.object,
                    &conv.what,
                    &mut conv.input,
                    progress,
                )
                .await;
                let _ = conv.input.0.shutdown().await;
                r
            };
            let relay = async {
                let mut buf = vec![0u8; CHUNK];
                loop {
                    let n = conv.output.read(&mut buf).await.map_err(|e| {
                        RestoreError::Failed(format!("reading {}'s output failed: {e}", conv.what))
                    })?;
                    if n == 0 {
                        return Ok(());
                    }
                    sink.write(&buf[..n]).await.map_err(|e| {
                        RestoreError::Failed(format!("psql stopped reading the restore: {e}"))
                    })?;
                }
            };
            let joined = tokio::try_join!(feed, relay).map(|_| ());
            match joined {
                Ok(()) => {
                    let exit = conv.output.finish().await?;
                    if exit.code != 0 {
                        Err(RestoreError::Failed(format!(
                            "{} failed (exit code {}): {}",
                            conv.what, exit.code, exit.stderr
                        )))
                    } else {
                        Ok(())
                    }
                }
                Err(e) => Err(e),
            }
        }
    };
    match streamed.and_then(|()| sink.finish()) {
        Ok(rest) => psql.finish(&rest).await,
        Err(e) => {
            let said = psql.abort().await;
            Err(match e {
                RestoreError::Failed(m) if !said.is_empty() => {
                    RestoreError::Failed(format!("{m}; psql said: {said}"))
                }
                other => other,
            })
        }
    }
}

async fn drop_database(
    access: &Access,
    maint: &str,
    name: &str,
    server_major: u32,
) -> Result<(), PgError> {
    let force = if server_major >= 13 {
        " WITH (FORCE)"
    } else {
        ""
    };
    access
        .query(
            maint,
            &format!("DROP DATABASE IF EXISTS {}{force}", sql::quote_ident(name)),
        )
        .await
        .map(|_| ())
}

/// After a failure: drops what the restore created (its temporary databases, then its roles,
/// which own nothing any more) and checks the target. Returns a sentence saying what state the
/// target is in — "Nothing was changed" only when that was verified.
async fn undo(
    access: &Access,
    plan: &Plan,
    maint: &str,
    run: &str,
    temps: &[Temporary],
    roles: &[String],
) -> String {
    for t in temps {
        if let Err(e) = drop_database(access, maint, &t.load, plan.server_major).await {
            tracing::warn!(database = %t.load, "Could not drop a temporary database: {e}");
        }
    }
    for role in roles.iter().rev() {
        if let Err(e) = access
            .query(
                maint,
                &format!("DROP ROLE IF EXISTS {}", sql::quote_ident(role)),
            )
            .await
        {
            tracing::warn!(role = %role, "Could not drop a role the failed restore created: {e}");
        }
    }
    let loads: Vec<String> = temps.iter().map(|t| sql::quote_literal(&t.load)).collect();
    let replaced: Vec<String> = temps
        .iter()
        .map(|t| sql::quote_literal(&t.replaced))
        .collect();
    let wanted: Vec<String> = plan
        .databases
        .iter()
        .filter(|d| d.exists)
        .map(|d| sql::quote_literal(&d.database))
        .collect();
    let roles_q: Vec<String> = roles.iter().map(|r| sql::quote_literal(r)).collect();
    let list = |v: &[String]| {
        if v.is_empty() {
            "NULL".to_string()
        } else {
            v.join(", ")
        }
    };
    let check = format!(
        "SELECT 'left:' || datname FROM pg_database WHERE datname IN ({})
         UNION ALL SELECT 'moved:' || datname FROM pg_database WHERE datname IN ({})
         UNION ALL SELECT 'missing:' || w FROM unnest(ARRAY[{}]::text[]) w
           WHERE w IS NOT NULL AND NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = w)
         UNION ALL SELECT 'role:' || rolname FROM pg_roles WHERE rolname IN ({})",
        list(&loads),
        list(&replaced),
        list(&wanted),
        list(&roles_q)
    );
    match access.query(maint, &check).await {
        Ok(rows) if rows.is_empty() => format!("Nothing was changed in {}", plan.target),
        Ok(rows) => format!(
            "{} may have been changed; left behind: {} (drop or rename them by hand)",
            plan.target,
            rows.join(", ")
        ),
        Err(e) => format!(
            "Could not check {} afterwards ({e}): look for databases named {LOAD_PREFIX}{run}_* and {REPLACED_PREFIX}{run}_*",
            plan.target
        ),
    }
}

/// Reads the globals object whole, verifies it and keeps what applies to this server.
async fn globals_script(
    store: &dyn Store,
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
    let body = fetch::open(store, m, g)
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
    #[test]
    fn leftovers_of_dead_runs_are_cleaned_and_live_ones_left_alone() {
        let rows: Vec<String> = [
            "db|pgbackup_restore_dead01_1",
            "db|pgbackup_restore_dead01_2",
            "db|pgbackup_restore_live02_1",
            "db|pgbackup_replaced_old03_1",
            "live|pgbackup_restore_live02",
            "role|app_owner|dead01",
            "role|Odd|Name|dead01",
            "role|reader|live02",
        ]
        .map(String::from)
        .to_vec();
        let l = classify_leftovers(&rows);
        assert_eq!(
            l.abandoned_databases,
            ["pgbackup_restore_dead01_1", "pgbackup_restore_dead01_2"]
        );
        assert_eq!(l.abandoned_roles, ["app_owner", "Odd|Name"]);
        assert_eq!(l.replaced, ["pgbackup_replaced_old03_1"]);
        assert_eq!(l.running, ["live02"]);
        assert_eq!(classify_leftovers(&[]), Leftovers::default());
    }

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
        assert!(
            script
                .contains("EXECUTE 'GRANT \"Report \"\"Reader\"\"\" TO app GRANTED BY postgres';"),
            "{script}"
        );
        assert!(
            script.contains("EXECUTE 'GRANT \"Report \"\"Reader\"\"\" TO app';"),
            "{script}"
        );
        assert!(script.contains("EXCEPTION WHEN insufficient_privilege OR undefined_object"));
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
    fn the_swap_renames_in_one_transaction() {
        let db = |name: &str, exists: bool| DbPlan {
            object: Object {
                name: format!("{name}.dump.zst"),
                kind: ObjectKind::Database,
                database: Some(name.into()),
                size: 1,
                raw_size: 1,
                sha256: "x".into(),
            },
            database: name.into(),
            exists,
            objects: 0,
        };
        let (a, b) = (db("shop", true), db("Odd \"name\"", false));
        let (ta, tb) = (temporary("ab12", 1), temporary("ab12", 2));
        let sql = swap_sql(
            &[(&a, &ta), (&b, &tb)],
            &["ALTER ROLE \"r\" RESET pgbackup.restore_run;".into()],
        );
        assert!(
            sql.starts_with("BEGIN;\nALTER ROLE \"r\" RESET pgbackup.restore_run;\n"),
            "the marks go in the swap's own transaction: {sql}"
        );
        assert!(
            sql.starts_with("BEGIN;\n") && sql.ends_with("COMMIT;\n"),
            "{sql}"
        );
        assert_eq!(sql.matches("BEGIN;").count(), 1);
        assert!(
            sql.contains("EXECUTE 'ALTER DATABASE \"shop\" RENAME TO pgbackup_replaced_ab12_1'"),
            "{sql}"
        );
        assert!(sql.contains("ALTER DATABASE pgbackup_restore_ab12_1 RENAME TO \"shop\";"));
        assert!(
            sql.contains("ALTER DATABASE pgbackup_restore_ab12_2 RENAME TO \"Odd \"\"name\"\"\";")
        );
        // A database that did not exist has nothing to move away.
        assert_eq!(sql.matches("pg_terminate_backend").count(), 1);
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
