//! One restore run's identity in the target: temporary database names, role marks, the live
//! session that says the run is alive, and clean-up of runs that died.

use super::*;

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

/// Whether `database` is one of a restore run's temporary databases: a backup of "all
/// databases" leaves them out (a half-loaded copy is nobody's data, and a dump's session on it
/// would hold up the swap).
pub fn is_temporary(database: &str) -> bool {
    [LOAD_PREFIX, REPLACED_PREFIX].iter().any(|p| {
        database
            .strip_prefix(p)
            .and_then(|rest| rest.split_once('_'))
            .is_some_and(|(run, n)| {
                !run.is_empty()
                    && run.bytes().all(|b| b.is_ascii_hexdigit())
                    && !n.is_empty()
                    && n.bytes().all(|b| b.is_ascii_digit())
            })
    })
}

/// Marks a role created by run `run` (see [`ROLE_MARK`]). Setting a custom parameter on a
/// role needs a superuser on Postgres 15+; without one the role stays unmarked and an
/// interruption leaves it to be dropped by hand, as before.
pub(super) fn mark_role_sql(role: &str, run: &str) -> String {
    let stmt = sql::quote_literal(&format!(
        "ALTER ROLE {} SET {ROLE_MARK} = '{run}'",
        sql::quote_ident(role)
    ));
    format!(
        "DO $pgbackup$ BEGIN EXECUTE {stmt}; EXCEPTION WHEN insufficient_privilege THEN NULL; END $pgbackup$;\n"
    )
}

/// A short id for one restore run: unique enough among runs on one server.
pub(super) fn run_id() -> String {
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
pub(super) fn liveness_name(run: &str) -> String {
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
pub(super) fn run_of(load: &str) -> Option<&str> {
    load.strip_prefix(LOAD_PREFIX)?
        .rsplit_once('_')
        .map(|(r, _)| r)
}

/// Reads what earlier restores left and which runs are alive. Pure once the rows are read
/// ([`classify_leftovers`]).
pub(super) async fn leftovers_of(access: &Access) -> Result<Leftovers, RestoreError> {
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
pub(super) async fn clean_abandoned(
    access: &Access,
    maint: &str,
    server_major: u32,
    l: &Leftovers,
) {
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
pub(super) fn maintenance_db(plan: &Plan) -> &'static str {
    if plan.databases.iter().any(|d| d.database == "postgres") {
        "template1"
    } else {
        "postgres"
    }
}
