//! One backup of one target. Logical (here): list databases, stream every dump through the
//! pipeline into the store, then `SHA256SUMS`, then `manifest.json` (the commit marker).
//! Physical: [`base`]. Reading the target: [`dump`]. The shared tail: [`commit`].

use std::sync::atomic::Ordering;

use bytes::Bytes;
use chrono::Utc;

use crate::config::labels::TargetSpec;
use crate::discovery::Target;
use crate::engine::docker::{Container, DockerClient};
use crate::engine::pg::{self, Access, PgError};
use crate::model::layout::{self, BackupId, Kind};
use crate::model::manifest::{self, Manifest, Object, ObjectKind, Postgres};
use crate::model::{Databases, Format, Method};
use crate::pipeline;
use crate::restore::sql::ForServerFilter;
use crate::store::catalog;
use crate::store::{Store, UploadError};
use tokio::io::{AsyncRead, ReadBuf};
mod base;
mod commit;
mod dump;
mod facts;
pub use base::*;
pub use commit::*;
pub use dump::*;

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
    #[error("{} failed (exit code {code}): {stderr}", dumped(program, database))]
    Dump {
        /// pg_dump, pg_dumpall or pg_basebackup.
        program: String,
        /// The database, or `(globals)` / `(base)`.
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
    /// The pre-backup hook failed: no backup was taken.
    #[error("{0}")]
    Hook(#[from] crate::job::hook::HookError),
}

/// What a failed dump program was doing, for its error message.
fn dumped(program: &str, database: &str) -> String {
    match program {
        "pg_dump" => format!("pg_dump of database {database:?}"),
        "pg_dumpall" => "pg_dumpall --globals-only (roles and tablespaces)".to_string(),
        other => other.to_string(),
    }
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

/// `pg_dump`'s arguments for one database of `spec`, in `snapshot` when one was exported for
/// it ([`facts`]). Pure.
pub fn pg_dump_args(spec: &TargetSpec, db: &str, snapshot: Option<&str>) -> Vec<String> {
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
        // The database itself too (owner, ACL, comment, settings): restores and `psql -f`
        // bring it back whole. Custom archives always hold it.
        Format::Plain | Format::Tar => args.push("--create".into()),
    }
    if let Some(id) = snapshot {
        args.push(format!("--snapshot={id}"));
    }
    args.extend(spec.dump_options.iter().cloned());
    args.push(dbname_arg(db));
    args
}

/// An object's name as stored: `.age` appended when the target's backups are encrypted.
fn sealed_name(spec: &TargetSpec, name: String) -> String {
    crate::model::encryption::object_name(name, spec.age_recipients.is_some())
}

/// What the manifest records of the target's encryption (recipients' public keys and
/// fingerprints only).
fn encryption_of(spec: &TargetSpec) -> Option<crate::model::encryption::Encryption> {
    spec.age_recipients.as_ref().map(|r| r.record())
}

/// The roles and tablespaces, by the server's own `pg_dumpall`, inside the target whatever the
/// method: a newer pg_dumpall leaves out what it does not read from an older server
/// (pg_dumpall 17 writes no GRANTED BY for servers before 16), and the roles are small.
/// A server reached by URL (`c` is `None`) has no container: the sidecar's pg_dumpall reads
/// it, without role passwords when the user is not a superuser (a managed database's admin
/// role cannot read `pg_authid`).
async fn dump_globals(
    ctx: &Ctx<'_>,
    c: Option<&Container>,
    access: &Access,
    spec: &TargetSpec,
    dir: &str,
) -> Result<Object, BackupError> {
    let name = sealed_name(spec, layout::globals_object(spec.compression));
    let key = layout::join(&[dir, &name]);
    let mut args: Vec<String> = vec!["--globals-only".into(), "--no-password".into()];
    let own = match c {
        Some(c) => Access::Exec {
            docker: ctx.docker.clone(),
            container: c.id.clone(),
            user: spec.user.clone(),
        },
        None => {
            let superuser = access
                .query(
                    "postgres",
                    "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
                )
                .await?;
            if superuser.first().map(String::as_str) != Some("t") {
                tracing::info!(user = %spec.user,
                    "Not a superuser: roles are backed up without their passwords (pg_dumpall --no-role-passwords); set them again after a restore into a new server.");
                args.push("--no-role-passwords".into());
            }
            access.clone()
        }
    };
    let (raw, up) = dump_object(
        ctx,
        &own,
        spec,
        &key,
        "pg_dumpall",
        &args,
        "(globals)",
        None,
    )
    .await?;
    Ok(stored(name, ObjectKind::Globals, None, raw, up))
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
    let access = access_for(ctx, target, c.as_ref(), spec).await?;
    let server = server_info(&access, "pg_dump")
        .await
        .map_err(|e| reaching(target, e))?;
    let dbs = databases(&access, spec).await?;
    let dir = layout::backup_dir(ctx.store.prefix(), &spec.prefix, &id);
    ensure_own_folder(ctx, spec, target).await?;
    ensure_new_folder(ctx, &dir).await?;
    let mut objects = Vec::new();
    // Row counts for restore drills, unless the dump options leave tables or rows out.
    let mut counted = match crate::model::facts::options_select_data(&spec.dump_options) {
        None => Some(crate::model::facts::Facts {
            method: crate::model::facts::IN_SNAPSHOT.into(),
            databases: Default::default(),
        }),
        Some(option) => {
            tracing::debug!(target_id = %target.target, option, "No row counts recorded: a dump option leaves tables or rows out.");
            None
        }
    };
    {
        if spec.globals {
            objects.push(dump_globals(ctx, c.as_ref(), &access, spec, &dir).await?);
        }
        for db in &dbs {
            let name = sealed_name(
                spec,
                layout::database_object(db, spec.format, spec.compression),
            );
            // Names are one-to-one (layout::database_object); this guards the manifest anyway:
            // two objects under one name would overwrite each other and fail every restore.
            if let Some(other) = objects.iter().find(|o: &&Object| o.name == name) {
                return Err(BackupError::Refused(format!(
                    "database {db:?} would be stored as {name}, which already holds {}: nothing was committed",
                    other.database.as_deref().unwrap_or("the roles")
                )));
            }
            let key = layout::join(&[&dir, &name]);
            let snapshot = match &mut counted {
                Some(_) => match facts::Snapshot::open(&access, db).await {
                    Ok(s) => Some(s),
                    Err(e) => {
                        tracing::warn!(target_id = %target.target, database = %db,
                            "No row counts for restore drills in this backup: {e}");
                        counted = None;
                        None
                    }
                },
                None => None,
            };
            let args = pg_dump_args(spec, db, snapshot.as_ref().map(|s| s.id.as_str()));
            let started = std::time::Instant::now();
            let filter = filter_for(spec.format, server.major, &server.dump_tool);
            let dumped = dump_object(ctx, &access, spec, &key, "pg_dump", &args, db, filter).await;
            if let Some(s) = snapshot {
                if dumped.is_err() {
                    s.abandon().await;
                } else {
                    match s.finish().await {
                        Ok(f) => {
                            if let Some(c) = counted.as_mut() {
                                c.databases.insert(db.clone(), f);
                            }
                        }
                        Err(e) => {
                            tracing::warn!(target_id = %target.target, database = %db,
                                "No row counts for restore drills in this backup: {e}");
                            counted = None;
                        }
                    }
                }
            }
            let (raw, up) = dumped?;
            tracing::info!(target_id = %target.target, database = %db, raw_bytes = raw, stored_bytes = up.size,
                duration_ms = started.elapsed().as_millis() as u64, "Database dumped.");
            objects.push(stored(
                name,
                ObjectKind::Database,
                Some(db.clone()),
                raw,
                up,
            ));
        }
        upload_sums(ctx, &dir, &objects).await?;
        let m = Manifest {
            format_version: manifest::FORMAT_VERSION,
            backup_id: id,
            kind: Kind::Logical,
            target: target.target.to_string(),
            prefix: dir.clone(),
            container: match (&c, &target.endpoint) {
                (Some(c), _) => c.name.clone(),
                (None, Some(e)) => e.redacted(),
                (None, None) => String::new(),
            },
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
            facts: counted,
            encryption: encryption_of(spec),
        };
        commit_manifest(ctx, &dir, m).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pg_dump_args_follow_the_format_and_quote_the_name() {
        let t = crate::discovery::test_target(
            "db",
            &[("pgbackup.dump_options", "--exclude-table=audit_log")],
        );
        let spec = t.settings().unwrap();
        let args = pg_dump_args(spec, "a=b", None);
        assert_eq!(
            args,
            [
                "--no-password",
                "--format=custom",
                "--compress=0",
                "--exclude-table=audit_log",
                "--dbname=dbname='a=b'",
            ]
        );
        let t = crate::discovery::test_target("db", &[("pgbackup.format", "plain")]);
        let args = pg_dump_args(t.settings().unwrap(), "shop", Some("00000003-0000001B-1"));
        assert_eq!(
            &args[1..],
            [
                "--format=plain",
                "--create",
                "--snapshot=00000003-0000001B-1",
                "--dbname=dbname='shop'"
            ]
        );
    }
}
