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
//!
//! The files, in the order a restore runs: [`resolve`] (which backup, which container),
//! [`plan`] (what will change; pure decisions), [`globals`] (roles), [`session`] (the run's
//! names and liveness), [`stream`] (object → checks → `psql`, shared with [`physical`]),
//! [`execute`] (load, swap, undo), [`sql`] (the SQL stream rewriter).

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

use crate::config::Defaults;
use crate::config::endpoint::Endpoint;
use crate::discovery::Target;
use crate::engine::docker::{Container, DockerClient, DockerError, ExecExit, ExecInput};
use crate::engine::pg::{self, Access, PgError, PgStream};
use crate::model::encryption::Identities;
use crate::model::layout::{self, BackupId, Kind};
use crate::model::manifest::{Manifest, Object, ObjectKind};
use crate::model::{Format, TargetId};
use crate::pipeline::fetch::{self, Damage};
use crate::store::Store;
use crate::store::catalog;

mod direct;
mod execute;
mod globals;
pub mod physical;
mod plan;
pub mod rescue;
mod resolve;
pub mod scripts;
mod session;
pub mod sql;
use sql::quote_ident;
mod stream;
pub use execute::*;
pub use globals::*;
pub use plan::*;
pub use resolve::*;
pub use session::*;
pub use stream::*;

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
    /// An object that cannot be read: a missing or wrong identity is bad input (the target is
    /// untouched: [`check_keys`] runs before anything changes), damage a failure.
    pub fn unreadable(e: fetch::Unreadable) -> RestoreError {
        match e {
            fetch::Unreadable::Locked(m) | fetch::Unreadable::Unsupported(m) => {
                RestoreError::Usage(m)
            }
            fetch::Unreadable::Damage(d) => RestoreError::Failed(d.to_string()),
        }
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            RestoreError::Usage(_) => crate::exit::USAGE,
            RestoreError::Refused(_) => crate::exit::REFUSED,
            RestoreError::Failed(_) => crate::exit::FAILED,
        }
    }
}

#[derive(Clone)]
pub struct Request {
    pub backup: BackupRef,
    pub from: Option<String>,
    pub to: Option<String>,
    /// `--to-url`: a server reached by URL instead of a container or declared target.
    pub to_url: Option<Endpoint>,
    pub db: Option<String>,
    pub clean: bool,
    /// Which kind `latest` means.
    pub kind: Kind,
    /// `--restore-option`s (validated), added to the target's `pgbackup.restore_options`.
    pub options: Vec<String>,
    /// `--post-sql`: scripts run once the restored databases have their names.
    pub post_sql: Option<std::path::PathBuf>,
    /// `--identity` / `PGBACKUP_AGE_IDENTITY_FILE`: what decrypts an encrypted backup.
    pub keys: Option<Arc<Identities>>,
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
        let (a, b) = (db_plan("shop", true), db_plan("Odd \"name\"", false));
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
        assert!(
            sql.contains("EXECUTE 'ALTER DATABASE \"pgbackup_restore_ab12_1\" RENAME TO \"shop\"'"),
            "{sql}"
        );
        assert!(
            sql.contains(
                "EXECUTE 'ALTER DATABASE \"pgbackup_restore_ab12_2\" RENAME TO \"Odd \"\"name\"\"\"'"
            ),
            "{sql}"
        );
        // Sessions are ended on the database moved away and on each loaded one (a tool that
        // lists every database may have connected to it); a database that did not exist has
        // nothing to move away.
        assert_eq!(sql.matches("pg_terminate_backend").count(), 3);
        assert!(sql.contains("WHERE datname = 'pgbackup_restore_ab12_2' AND pid"));
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn a_restores_temporary_databases_are_known_by_name_and_no_others() {
        let t = temporary(&run_id(), 3);
        assert!(is_temporary(&t.load) && is_temporary(&t.replaced), "{t:?}");
        for user_db in [
            "pgbackup_restore_",
            "pgbackup_restore_notes",
            "pgbackup_restore_ab12_",
            "pgbackup_replaced_ab12_x",
            "app_pgbackup_restore_ab12_1",
            "shop",
        ] {
            assert!(!is_temporary(user_db), "{user_db}");
        }
    }

    fn db_plan(name: &str, exists: bool) -> DbPlan {
        DbPlan {
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
        }
    }

    #[test]
    fn the_objects_a_restore_loads() {
        let mut m = crate::model::Manifest::sample(
            "shop/db",
            "shop/db",
            "20261121T030000Z-logical".parse().unwrap(),
        );
        m.objects.push(db_plan("crm", true).object);
        m.databases.push("crm".into());
        let names = |v: Vec<Object>| v.into_iter().map(|o| o.name).collect::<Vec<_>>();
        assert_eq!(
            names(chosen_objects(&m, None, None).unwrap()),
            ["app.dump.zst", "crm.dump.zst"]
        );
        assert_eq!(
            names(chosen_objects(&m, None, Some("crm")).unwrap()),
            ["crm.dump.zst"]
        );
        assert_eq!(
            names(chosen_objects(&m, Some("app.dump.zst"), None).unwrap()),
            ["app.dump.zst"]
        );
        for (object, db, says) in [
            (None, Some("nope"), "has no database \"nope\""),
            (Some("nope.dump.zst"), None, "has no object"),
            (
                Some("app.dump.zst"),
                Some("crm"),
                "but --db asks for \"crm\"",
            ),
        ] {
            let e = chosen_objects(&m, object, db).unwrap_err();
            assert!(matches!(e, RestoreError::Usage(_)), "{e}");
            assert!(e.to_string().contains(says), "{e}");
        }
    }

    /// A plan restoring the sample backup (Postgres 17) into a server of `server_major`.
    fn sample_plan(server_major: u32) -> Plan {
        let m = crate::model::Manifest::sample(
            "shop/db",
            "shop/db",
            "20261121T030000Z-logical".parse().unwrap(),
        );
        Plan {
            manifest: m,
            place: Place::Container(crate::discovery::test_container("id", "db", &[], true)),
            target: "shop/db".into(),
            user: "postgres".into(),
            server_major,
            restore_tool: format!("pg_restore (PostgreSQL) {server_major}.2"),
            sidecar_tool: None,
            convert_in_sidecar: false,
            globals: None,
            databases: vec![db_plan("shop", true), db_plan("new", false)],
            clean: true,
            leftovers: Leftovers::default(),
            options: vec![],
            scripts: vec![],
            scripts_database: "postgres".into(),
            keys: None,
            network: None,
        }
    }

    /// pg_restore loads a custom archive straight into the server when it reads it and the
    /// archive needs no adapting; everything else goes through psql.
    #[test]
    fn custom_archives_load_directly_unless_they_need_the_sidecar_or_adapting() {
        let same = sample_plan(17);
        assert!(same.direct());
        assert!(
            same.to_string()
                .contains("new database by pg_restore --dbname;")
        );
        assert!(sample_plan(18).direct(), "an upgrade");
        let mut older = sample_plan(16);
        older.manifest.postgres.major = 16;
        assert!(
            !older.direct(),
            "pg_dump 17's SQL of a Postgres 16 server (connect mode) is adapted to 16"
        );
        let mut sidecar = sample_plan(17);
        sidecar.convert_in_sidecar = true;
        assert!(!sidecar.direct());
        for format in [Format::Plain, Format::Tar] {
            let mut p = sample_plan(17);
            p.manifest.format = format;
            assert!(!p.direct(), "{format:?}");
            assert!(!p.to_string().contains("--dbname"));
        }
        let mut unknown = sample_plan(17);
        unknown.manifest.postgres.dump_tool = "pg_dump".into();
        assert!(!unknown.direct(), "an unknown pg_dump goes the careful way");
        // A server reached by URL is loaded by the sidecar's pg_restore (18 here): it sets
        // transaction_timeout, which servers before 17 reject.
        for (server, direct) in [(16, false), (17, true), (18, true)] {
            let mut url = sample_plan(server);
            url.manifest.postgres.dump_tool = format!("pg_dump (PostgreSQL) {server}.1");
            url.restore_tool = "pg_restore (PostgreSQL) 18.6".into();
            assert_eq!(url.direct(), direct, "into {server}");
        }
        // Over the network, the plan says whose pg_restore and where.
        let mut near = sample_plan(17);
        near.network = Some(Network {
            host: "shop-db-1".into(),
            password: Some(crate::config::Secret::new("s3cret".into())),
        });
        let text = near.to_string();
        assert!(
            text.contains("by the sidecar's pg_restore --dbname, connected to shop-db-1:5432;"),
            "{text}"
        );
        assert!(!text.contains("s3cret") && !format!("{near:?}").contains("s3cret"));
    }

    #[rstest::rstest]
    #[case(17, 17, 17, true)]
    #[case(17, 17, 13, true)]
    #[case(13, 13, 13, true)]
    #[case(18, 17, 17, true)]
    #[case(18, 18, 15, true)]
    #[case(18, 16, 16, false)]
    #[case(18, 13, 13, false)]
    #[case(16, 17, 17, false)]
    #[case(17, 18, 18, false)]
    fn which_pg_restore_loads_into_which_server(
        #[case] tool: u32,
        #[case] server: u32,
        #[case] dump: u32,
        #[case] loads: bool,
    ) {
        assert_eq!(loads_into(tool, server, dump), loads);
    }

    #[test]
    fn a_plan_into_a_newer_major_says_it_is_an_upgrade() {
        let same = sample_plan(17).to_string();
        assert!(same.contains("(custom, Postgres 17, "), "{same}");
        assert!(same.contains("Postgres 17, as postgres)"), "{same}");
        assert!(!same.contains("upgrade"), "{same}");
        let up = sample_plan(18).to_string();
        assert!(up.contains("Postgres 18, as postgres)"), "{up}");
        assert!(
            up.contains("  upgrade    Postgres 17 → 18: roles, databases"),
            "{up}"
        );
        assert!(up.contains("run ANALYZE afterwards"), "{up}");
        assert!(!up.contains("public schema"), "{up}");
        assert_eq!(sample_plan(18).public_schema_before_15(), None);
        // A backup written by pg_dump 13 into 15 or later: the public schema as it was.
        let mut from13 = sample_plan(15);
        from13.manifest.postgres.major = 13;
        from13.manifest.postgres.dump_tool = "pg_dump (PostgreSQL) 13.23".into();
        let text = from13.to_string();
        assert!(text.contains("  upgrade    Postgres 13 → 15"), "{text}");
        assert!(
            text.contains(
                "public schema stays as before 15 (owned by postgres, CREATE for everyone)"
            ),
            "{text}"
        );
        assert_eq!(
            from13.public_schema_before_15().unwrap(),
            "ALTER SCHEMA public OWNER TO \"postgres\";\nGRANT CREATE ON SCHEMA public TO PUBLIC;\n"
        );
        // Written by a newer pg_dump (connect mode): it wrote the schema's state itself.
        from13.manifest.postgres.dump_tool = "pg_dump (PostgreSQL) 18.6".into();
        assert_eq!(from13.public_schema_before_15(), None);
        from13.server_major = 13;
        from13.manifest.postgres.dump_tool = "pg_dump (PostgreSQL) 13.23".into();
        assert_eq!(from13.public_schema_before_15(), None);
    }

    /// Answers every statement with no rows, except the final check, answered with `check`;
    /// records the statements.
    struct FakeServer {
        check: Vec<String>,
        seen: std::sync::Mutex<Vec<String>>,
    }

    #[async_trait::async_trait]
    impl crate::engine::pg::Query for FakeServer {
        async fn query(&self, _db: &str, sql: &str) -> Result<Vec<String>, PgError> {
            self.seen.lock().unwrap().push(sql.to_string());
            Ok(if sql.contains("'left:'") {
                self.check.clone()
            } else {
                vec![]
            })
        }
    }

    /// After a failed load: the temporary databases are dropped, then the roles the restore
    /// created (newest first), and "Nothing was changed" is said only when the check finds
    /// nothing left; otherwise what is left is named.
    #[tokio::test]
    async fn undo_drops_what_the_restore_created_and_checks_before_saying_so() {
        let plan = sample_plan(17);
        let temps = [temporary("ab12", 1), temporary("ab12", 2)];
        let roles = ["reader".to_string(), "Writer \"x\"".to_string()];
        let server = FakeServer {
            check: vec![],
            seen: Default::default(),
        };
        let said = execute::undo(&server, &plan, "postgres", "ab12", &temps, &roles).await;
        assert_eq!(said, "Nothing was changed in shop/db");
        let seen = server.seen.lock().unwrap().clone();
        assert_eq!(
            seen[..4],
            [
                "DROP DATABASE IF EXISTS \"pgbackup_restore_ab12_1\" WITH (FORCE)".to_string(),
                "DROP DATABASE IF EXISTS \"pgbackup_restore_ab12_2\" WITH (FORCE)".into(),
                "DROP ROLE IF EXISTS \"Writer \"\"x\"\"\"".into(),
                "DROP ROLE IF EXISTS \"reader\"".into(),
            ]
        );
        // The check asks for the loads, the moved-away names, the databases that must still be
        // there and the roles.
        let check = &seen[4];
        for name in [
            "'pgbackup_restore_ab12_1'",
            "'pgbackup_replaced_ab12_2'",
            "'shop'",
            "'reader'",
        ] {
            assert!(check.contains(name), "{name}: {check}");
        }
        assert!(
            !check.contains("'new'"),
            "a database that did not exist is not missed"
        );

        let server = FakeServer {
            check: vec!["left:pgbackup_restore_ab12_1".into(), "missing:shop".into()],
            seen: Default::default(),
        };
        let said = execute::undo(&server, &plan, "postgres", "ab12", &temps, &roles).await;
        assert!(said.starts_with("shop/db may have been changed"), "{said}");
        assert!(
            said.contains("left:pgbackup_restore_ab12_1, missing:shop"),
            "{said}"
        );
    }
}
