//! A custom archive loaded straight into its temporary database by `pg_restore --dbname`, the
//! way a local restore runs: the archive crosses into the target once and its table data goes
//! to the server through libpq's COPY, instead of being turned into SQL, carried back and
//! parsed again by psql (see [`Plan::direct`]).
//!
//! Two steps per database, both inside the restore's all-or-nothing method (the temporary
//! database is dropped on any failure, the swap happens only when every database loaded):
//!
//! 1. the database itself: `pg_restore --create --schema-only --file=-` reads the archive's
//!    table of contents (at its start: the rest of the stream is not read), and only the
//!    database's own entries (`CREATE DATABASE`, owner, comment, settings, grants), pointed at
//!    the temporary name by [`sql::Rewriter`] with `database_only`, run in psql before the load
//!    (`pg_restore --create` runs the database's grants last; the load's own session is the
//!    restoring user's, whom they do not hold back);
//! 2. everything inside it: `pg_restore --dbname=<temporary> --single-transaction
//!    --exit-on-error` with the archive on its stdin (without `--create`, pg_restore leaves the
//!    database's own entries out): the sidecar's own, connected over a network it shares with
//!    the target ([`Plan::network`]: no docker exec copy at all, as fast as a local restore), or
//!    else the target's, through docker exec.

use super::*;

/// `pg_restore` options of step 2 (after `--username` and `--dbname`).
pub(super) const LOAD: [&str; 3] = ["--single-transaction", "--exit-on-error", "--no-password"];

/// Loads database `d` into `t.load` in the two steps above.
pub(super) async fn load(s: &Session<'_>, d: &DbPlan, t: &Temporary) -> Result<(), RestoreError> {
    create(s, d, t).await?;
    fill(s, d, t).await
}

/// Step 1: creates the temporary database with the archived database's own properties.
async fn create(s: &Session<'_>, d: &DbPlan, t: &Temporary) -> Result<(), RestoreError> {
    let plan = s.plan;
    let what = format!(
        "restoring database {:?} from {} (the database itself)",
        d.database, d.object.name
    );
    let mut psql = Psql::start(&s.access, s.maint, &what).await?;
    let mut sink = Rewriting {
        rewriter: sql::Rewriter::new(rewrite(plan, d, t, true)),
        input: &mut psql.input,
        buf: Vec::new(),
    };
    let mut options = plan.options.clone();
    options.push("--schema-only".into());
    let conv = Converter::in_target(&s.access, &plan.place.name(), &options).await?;
    let Converter {
        mut input,
        mut output,
        what: conv_what,
    } = conv;
    let relayed = {
        let relay = relay(&mut output, &mut sink, &conv_what);
        tokio::pin!(relay);
        let feed = feed_until_closed(s, d, &mut input);
        tokio::select! {
            // pg_restore has read the table of contents and is done with its input.
            r = &mut relay => r,
            r = feed => match r {
                Ok(()) => relay.await,
                Err(e) => Err(e),
            },
        }
    };
    drop(input);
    let ended = match relayed {
        Ok(()) => output.finish().await.map_err(RestoreError::from),
        Err(e) => Err(e),
    };
    let checked = ended.and_then(|exit| {
        if exit.code == 0 {
            Ok(())
        } else {
            Err(RestoreError::Failed(format!(
                "{conv_what} failed reading the archive's table of contents (exit code {}): {}",
                exit.code, exit.stderr
            )))
        }
    });
    let fed = checked.and_then(|()| sink.finish());
    psql.settle(fed).await
}

/// The object into `input` until the reader stops taking it (pg_restore has what it needs)
/// or the object ends. Nothing is checked here: step 2 reads the whole object and checks it.
async fn feed_until_closed(
    s: &Session<'_>,
    d: &DbPlan,
    input: &mut Raw,
) -> Result<(), RestoreError> {
    let plan = s.plan;
    let (mut reader, _) = fetch::content(s.store, &plan.manifest, &d.object, plan.keys.as_deref())
        .await
        .map_err(RestoreError::unreadable)?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = reader
            .read(&mut buf)
            .await
            .map_err(|e| RestoreError::Failed(format!("reading {} failed: {e}", d.object.name)))?;
        if n == 0 || input.0.write_all(&buf[..n]).await.is_err() {
            input.close().await;
            return Ok(());
        }
    }
}

/// Step 2: `pg_restore --dbname` fed the whole object (checked as it streams), its output
/// drained. A failure of either side names both what pg_restore said and any damage found.
async fn fill(s: &Session<'_>, d: &DbPlan, t: &Temporary) -> Result<(), RestoreError> {
    let plan = s.plan;
    let mut args = vec![
        format!("--username={}", plan.user),
        format!("--dbname={}", t.load),
    ];
    args.extend(LOAD.map(String::from));
    args.extend(plan.options.iter().cloned());
    let (loader, what) = match &plan.network {
        Some(n) => (
            n.access(&plan.user),
            format!("pg_restore in the sidecar (connected to {}:5432)", n.host),
        ),
        None => (
            s.access.clone(),
            format!("pg_restore in {}", plan.place.name()),
        ),
    };
    let (mut output, input) = loader.program_with_stdin("pg_restore", &args).await?;
    let mut input = Raw(input);
    let label = format!("{} ({})", d.object.name, d.database);
    let feed = feed_whole(s, d, &label, &mut input);
    let drain = async {
        let _ = tokio::io::copy(&mut output, &mut tokio::io::sink()).await;
        output.finish().await
    };
    let (fed, exit) = tokio::join!(feed, drain);
    let exit = exit?;
    match (fed, exit.code) {
        (Ok(()), 0) => Ok(()),
        (Err(e), 0) => Err(e),
        (fed, code) => {
            let said = format!(
                "{what} failed loading {} (exit code {code}): {}",
                d.database,
                exit.stderr.trim()
            );
            Err(RestoreError::Failed(match fed {
                Err(RestoreError::Failed(m)) => format!("{said}; {m}"),
                _ => said,
            }))
        }
    }
}
