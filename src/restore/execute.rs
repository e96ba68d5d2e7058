//! Carrying out a logical restore: load every database into a temporary one, swap them all in
//! one transaction, undo everything on any failure.

use super::*;
use crate::engine::pg::Query;

/// Renames database `name` to the identifier `to`, ending its sessions first; one that
/// reconnects before the rename makes it fail with object_in_use (after the server's own 5 s
/// wait): it is ended too and the rename tried again.
fn rename_ending_sessions(name: &str, to: &str) -> String {
    let literal = sql::quote_literal(name);
    let rename = sql::quote_literal(&format!(
        "ALTER DATABASE {} RENAME TO {to}",
        sql::quote_ident(name)
    ));
    format!(
        "DO $pgbackup$
DECLARE tries int := 0;
BEGIN
  LOOP
    PERFORM pg_terminate_backend(pid) FROM pg_stat_activity
      WHERE datname = {literal} AND pid <> pg_backend_pid();
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
    )
}

/// The swap, one transaction: every database being replaced is renamed out of the way (its
/// sessions ended first), every loaded database takes its name (sessions on it ended too: no
/// one but this run has business there, yet a tool listing every database, a monitoring agent
/// or another backup, may have connected). Either all of it commits or none of it does.
pub fn swap_sql(pairs: &[(&DbPlan, &Temporary)], also: &[String]) -> String {
    let mut s = String::from("BEGIN;\n");
    for stmt in also {
        s.push_str(stmt);
        s.push('\n');
    }
    for (d, t) in pairs {
        if d.exists {
            s.push_str(&rename_ending_sessions(&d.database, &t.replaced));
        }
        s.push_str(&rename_ending_sessions(
            &t.load,
            &sql::quote_ident(&d.database),
        ));
    }
    s.push_str("COMMIT;\n");
    s
}

/// The swap undone, one transaction: every restored database goes back to its temporary name
/// (its sessions ended), every replaced one takes its name again.
pub fn unswap_sql(pairs: &[(&DbPlan, &Temporary)]) -> String {
    let mut s = String::from("BEGIN;\n");
    for (d, t) in pairs {
        s.push_str(&rename_ending_sessions(&d.database, &t.load));
        if d.exists {
            s.push_str(&format!(
                "ALTER DATABASE {} RENAME TO {};\n",
                t.replaced,
                sql::quote_ident(&d.database)
            ));
        }
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
    check_keys(
        store,
        &plan.manifest,
        &objects_of(plan),
        plan.keys.as_deref(),
    )
    .await?;
    let started = std::time::Instant::now();
    let access = plan.place.access(docker, &plan.user);
    let maint = maintenance_db(plan);
    let run = run_id();
    let temps: Vec<Temporary> = (1..=plan.databases.len())
        .map(|n| temporary(&run, n))
        .collect();
    let mut created_roles = Vec::new();
    let mut skipped = Vec::new();
    // Alive for as long as this run: the next restore knows it from an interrupted one.
    let alive = pg::Held::open(
        &access,
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
    let session = Session {
        access: access.clone(),
        store,
        plan,
        maint,
        progress,
    };

    let loaded = async {
        if let Some(g) = &plan.globals {
            let (created, skip) = restore_roles(&session, g, &access, &run).await?;
            skipped = skip;
            created_roles = created;
        }
        for (d, t) in plan.databases.iter().zip(&temps) {
            load(&session, d, t).await?;
            tracing::info!(database = %d.database, temporary = %t.load, bytes = d.object.size,
                "Database loaded; it takes its name when every database of the backup is loaded.");
        }
        Ok(())
    }
    .await;

    let swapped = match loaded {
        Ok(()) => swap(&access, plan, maint, &temps, &created_roles).await,
        Err(e) => Err(e),
    };
    // The `--post-sql` scripts run on the restored databases under their names; a failure
    // puts the old ones back and is undone like any other.
    let swapped = match swapped {
        Ok(_) if !plan.scripts.is_empty() => {
            match super::scripts::run(&access, &plan.scripts_database, &plan.scripts).await {
                Ok(()) => Ok(()),
                Err(e) => {
                    let pairs: Vec<(&DbPlan, &Temporary)> =
                        plan.databases.iter().zip(&temps).collect();
                    match access.query(maint, &unswap_sql(&pairs)).await {
                        Ok(_) => Err(e),
                        Err(back) => {
                            alive.release().await;
                            return Err(RestoreError::Failed(format!(
                                "{e}; putting the old databases back failed too ({back}): the restored databases keep their names and the old ones are named {REPLACED_PREFIX}{run}_*"
                            )));
                        }
                    }
                }
            }
        }
        other => other.map(|_| ()),
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
    let left_over = drop_replaced(&access, plan, maint, &temps).await;
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

/// Gives every loaded database its name in one transaction, moving the databases it replaces
/// aside, and removes the run's marks from the roles it created.
async fn swap(
    access: &Access,
    plan: &Plan,
    maint: &str,
    temps: &[Temporary],
    created_roles: &[String],
) -> Result<Vec<String>, RestoreError> {
    let pairs: Vec<(&DbPlan, &Temporary)> = plan.databases.iter().zip(temps).collect();
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

/// Drops the databases the swap moved aside; returns those that could not be dropped.
async fn drop_replaced(
    access: &Access,
    plan: &Plan,
    maint: &str,
    temps: &[Temporary],
) -> Vec<String> {
    let mut left_over = Vec::new();
    for (d, t) in plan.databases.iter().zip(temps) {
        if d.exists
            && let Err(e) = drop_database(access, maint, &t.replaced, plan.server_major).await
        {
            tracing::warn!(database = %t.replaced, "The replaced database could not be dropped: {e}");
            left_over.push(t.replaced.clone());
        }
    }
    left_over
}

/// What every step of one restore run works with.
pub(super) struct Session<'a> {
    /// How the restore reaches the server ([`Place::access`]).
    pub(super) access: Access,
    pub(super) store: &'a dyn Store,
    pub(super) plan: &'a Plan,
    /// The database psql stays on ([`maintenance_db`]).
    pub(super) maint: &'static str,
    pub(super) progress: &'a dyn Progress,
}

/// Creates the roles of `globals.sql` that the target lacks, in one transaction, each marked
/// with this run until the swap commits. Returns the roles created and the statements skipped.
pub(super) async fn restore_roles(
    s: &Session<'_>,
    g: &Object,
    access: &Access,
    run: &str,
) -> Result<(Vec<String>, Vec<String>), RestoreError> {
    let plan = s.plan;
    let (script, created, skipped) = globals_script(s.store, plan, g, access).await?;
    let what = format!("restoring roles from {}", g.name);
    let mut psql = Psql::start(&s.access, s.maint, &what).await?;
    // One transaction: every role is created, or none is. Roles commit first: the databases'
    // owners and grants need them. Each new role is marked with this run until the swap
    // commits, so a crash in between cannot leave it unnoticed.
    let marks: String = created.iter().map(|r| mark_role_sql(r, run)).collect();
    let body = format!("BEGIN;\n{script}\n{marks}COMMIT;\n");
    if let Err(e) = psql.input.write_all(body.as_bytes()).await {
        let said = psql.abort().await;
        return Err(RestoreError::Failed(format!("{what} failed: {e} {said}")));
    }
    psql.finish("").await?;
    Ok((created, skipped))
}

/// Loads one database into its temporary database: SQL (converted from a custom archive by
/// pg_restore, in the target or in the sidecar) → [`sql::Rewriter`] → psql in the target.
pub(super) async fn load(s: &Session<'_>, d: &DbPlan, t: &Temporary) -> Result<(), RestoreError> {
    let plan = s.plan;
    if plan.direct() {
        return super::direct::load(s, d, t).await;
    }
    let what = format!("restoring database {:?} from {}", d.database, d.object.name);
    let mut psql = Psql::start(&s.access, s.maint, &what).await?;
    let mut sink = Rewriting {
        rewriter: sql::Rewriter::new(rewrite(plan, d, t, false)),
        input: &mut psql.input,
        buf: Vec::new(),
    };
    let label = format!("{} ({})", d.object.name, d.database);
    let streamed = match plan.manifest.format {
        Format::Plain | Format::Tar => {
            stream_object(
                s.store,
                &plan.manifest,
                &d.object,
                plan.keys.as_deref(),
                &label,
                &mut sink,
                s.progress,
            )
            .await
        }
        Format::Custom => convert(s, d, &mut sink).await,
    };
    let fed = streamed.and_then(|()| sink.finish());
    psql.settle(fed).await
}

/// A custom archive through `pg_restore --create -f -` (in the target or in the sidecar) into
/// `sink`: the object is fed to it while its SQL is relayed on.
async fn convert(
    s: &Session<'_>,
    d: &DbPlan,
    sink: &mut Rewriting<'_>,
) -> Result<(), RestoreError> {
    let plan = s.plan;
    let mut conv = if plan.convert_in_sidecar {
        Converter::in_sidecar(&plan.options)?
    } else {
        Converter::in_target(&s.access, &plan.place.name(), &plan.options).await?
    };
    let feed = feed_whole(s, d, &conv.what, &mut conv.input);
    let relay = relay(&mut conv.output, sink, &conv.what);
    if let Err(e) = tokio::try_join!(feed, relay) {
        // psql can reject garbage from a damaged object before the stream's end shows the
        // damage: the stored object is read again whole so the error names the real cause.
        return Err(
            match (e, fetch::recheck(s.store, &plan.manifest, &d.object).await) {
                (RestoreError::Failed(m), Err(damage)) if !m.contains(&damage.to_string()) => {
                    RestoreError::Failed(format!("{m}; {damage}: restore rolled back"))
                }
                (e, _) => e,
            },
        );
    }
    let exit = conv.output.finish().await?;
    if exit.code != 0 {
        return Err(RestoreError::Failed(format!(
            "{} failed (exit code {}): {}",
            conv.what, exit.code, exit.stderr
        )));
    }
    Ok(())
}

pub(super) async fn drop_database(
    access: &dyn Query,
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
pub(super) async fn undo(
    access: &dyn Query,
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
