//! `pgctl run`: start-up checks, then live discovery and the HTTP endpoints until SIGTERM.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::{self, Config};
use crate::discovery::{self, S3_PROBE_EVERY, Shared};
use crate::engine::docker::{DockerClient, DockerError};
use crate::job::runner::{RunError, Runner, Trigger};
use crate::model::layout::Kind;
use crate::store::{self, SharedStore, StoreError};
use crate::{app::http, exit};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("start-up check failed: {0}")]
    Docker(#[from] DockerError),
    #[error("start-up check failed: {0}")]
    Store(#[from] StoreError),
    #[error(
        "cannot listen on PGBACKUP_HTTP_ADDR={addr}: {source}; choose a free address or set it to off"
    )]
    Http {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

impl StartupError {
    pub fn exit_code(&self) -> i32 {
        match self {
            StartupError::Http { .. } => exit::USAGE,
            _ => exit::UNAVAILABLE,
        }
    }
}

/// How long start-up waits for an S3 endpoint that is still starting (refusals fail at once).
const S3_PATIENCE: Duration = Duration::from_secs(30);

/// How long each periodic check of the store may wait.
fn probe_patience(cfg: &Config) -> Duration {
    cfg.destination
        .s3()
        .map(|s3| s3.timeout * 2)
        .unwrap_or(Duration::from_secs(10))
}

/// How long a shutdown waits for running jobs to cancel, clean up and record their failure.
/// Below compose.yaml's `stop_grace_period` (60 s) so Docker never kills a job mid-cleanup.
pub const STOP_GRACE: Duration = Duration::from_secs(45);

/// The controller, until SIGTERM or SIGINT, which it honours at any point (also during the
/// start-up checks, which may wait on an S3 endpoint).
pub async fn run(cfg: Config) -> Result<(), StartupError> {
    let mut signal = std::pin::pin!(wait_for_signal());
    let started = tokio::select! {
        r = startup(&cfg) => r?,
        _ = &mut signal => {
            tracing::info!("Shutdown requested during start-up; stopping.");
            return Ok(());
        }
    };
    serve(cfg, started, signal).await;
    Ok(())
}

struct Started {
    docker: DockerClient,
    store: SharedStore,
    listener: Option<tokio::net::TcpListener>,
}

/// How long a single-shot run waits, before it exits, for notifications and pings still on
/// their way (each is tried for up to about half a minute).
const FLUSH_WITHIN: Duration = Duration::from_secs(45);

/// `pgctl run --once [--physical] [TARGET…]` (or `PGBACKUP_SINGLE_SHOT=true`): the start-up
/// checks, one listing, a backup of every chosen target (logical, or base backups with
/// `physical`; schedules are not consulted), retention, notifications, then exit: 0 only when
/// every backup succeeded. For host cron, Kubernetes CronJobs and CI.
pub async fn once(cfg: Config, names: Vec<String>, physical: bool) -> i32 {
    let mut signal = std::pin::pin!(wait_for_signal());
    let started = tokio::select! {
        r = connect(&cfg) => r,
        _ = &mut signal => {
            tracing::info!("Shutdown requested during start-up; stopping.");
            return exit::FAILED;
        }
    };
    let (docker, store) = match started {
        Ok(x) => x,
        Err(e) => {
            tracing::error!("{e}");
            return e.exit_code();
        }
    };
    let containers = match docker.list_labelled().await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("listing the labelled containers failed: {e}");
            return exit::UNAVAILABLE;
        }
    };
    let mut registry = discovery::Registry::default();
    registry.replace_all(&containers, &cfg.defaults());
    let all = registry.targets();
    for t in &all {
        if let discovery::Parsed::Invalid { errors } = &t.spec {
            let errors: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
            tracing::error!(target_id = %t.target, "Target skipped, its labels are invalid: {}", errors.join("; "));
        }
    }
    let (chosen, unknown) = discovery::choose(&all, &names, names.is_empty());
    if !unknown.is_empty() {
        tracing::error!(
            "No valid target named {}; see `pgctl status`. Nothing was backed up.",
            unknown.join(", ")
        );
        return exit::USAGE;
    }
    let invalid = all.iter().filter(|t| t.settings().is_none()).count();
    if chosen.is_empty() {
        tracing::error!(
            invalid,
            "No valid target to back up (label a Postgres service with pgbackup.enable=true; see `pgctl status`)."
        );
        return exit::FAILED;
    }
    let runner = Arc::new(Runner::new(
        docker,
        store,
        cfg.defaults(),
        cfg.concurrency,
        cfg.min_backups,
        cfg.notify.clone(),
    ));
    let kind = if physical {
        Kind::Physical
    } else {
        Kind::Logical
    };
    let jobs: Vec<_> = chosen
        .iter()
        .map(|t| {
            // A run of every target skips one backed up recently (skip_if_newer_than); a
            // named target always runs.
            if names.is_empty() {
                runner.submit_unless_recent(t.clone(), kind, Trigger::Once, true)
            } else {
                runner.submit(t.clone(), kind, Trigger::Once, true)
            }
        })
        .collect();
    tracing::info!(
        targets = chosen.len(),
        jobs = jobs.len(),
        "Single-shot run: backing up."
    );
    let results = tokio::select! {
        r = futures_util::future::join_all(jobs) => r,
        _ = &mut signal => {
            tracing::info!("Shutdown requested; stopping the running backups.");
            runner.shutdown(STOP_GRACE).await;
            runner.notifier.flush(Duration::from_secs(5)).await;
            return exit::FAILED;
        }
    };
    let (mut ok, mut failed, mut skipped) = (0, 0, 0);
    for r in results {
        match r {
            Ok(Ok(res)) if res.ok => ok += 1,
            Ok(Ok(_)) => failed += 1,
            // Logged by the runner; nothing failed.
            Ok(Err(RunError::Recent { .. })) => skipped += 1,
            Ok(Err(e)) => {
                failed += 1;
                tracing::error!("A backup did not run: {e}");
            }
            Err(_) => {
                failed += 1;
                tracing::error!("A backup task was aborted.");
            }
        }
    }
    let lost = runner.notifier.flush(FLUSH_WITHIN).await;
    if lost > 0 {
        tracing::warn!(
            messages = lost,
            "Notifications still undelivered at exit were given up."
        );
    }
    runner.shutdown(Duration::from_secs(1)).await;
    if failed == 0 && invalid == 0 {
        tracing::info!(
            backups = ok,
            skipped,
            "Single-shot run finished: every backup succeeded."
        );
        exit::OK
    } else {
        tracing::error!(
            succeeded = ok,
            failed,
            invalid_targets = invalid,
            "Single-shot run finished with failures."
        );
        exit::FAILED
    }
}

/// Docker and the backup destination, both checked.
async fn connect(cfg: &Config) -> Result<(DockerClient, SharedStore), StartupError> {
    tracing::info!(settings = ?config::describe(cfg), version = env!("CARGO_PKG_VERSION"), "pgbackup starting.");
    let docker =
        DockerClient::connect_scoped(cfg.docker_host.as_deref(), &cfg.defaults.scope).await?;
    tracing::info!(host = docker.host(), scope = %docker.scope(), own_project = docker.own_project().unwrap_or("(none)"),
        "Docker daemon reachable; acting on the containers in scope (PGBACKUP_SCOPE).");
    let store = store::open(&cfg.destination).await;
    store.probe(S3_PATIENCE).await?;
    tracing::info!(destination = %store.location(), "Backup destination reachable and writable.");
    Ok((docker, store))
}

async fn startup(cfg: &Config) -> Result<Started, StartupError> {
    let (docker, store) = connect(cfg).await?;
    let listener = match cfg.http_addr {
        Some(addr) => Some(
            http::bind(addr)
                .await
                .map_err(|source| StartupError::Http {
                    addr: addr.to_string(),
                    source,
                })?,
        ),
        None => None,
    };
    Ok(Started {
        docker,
        store,
        listener,
    })
}

async fn serve(cfg: Config, started: Started, signal: impl std::future::Future<Output = ()>) {
    let Started {
        docker,
        store,
        listener,
    } = started;
    for u in crate::restore::physical::unfinished(&docker).await {
        let service = u.split(' ').next().unwrap_or(&u).to_string();
        tracing::warn!(service = %service, "Unfinished physical restore of {u}: finish it with `pgctl restore --resume {service}` or undo it with `pgctl restore --rollback {service}`.");
    }
    // Throwaway servers of drills a killed sidecar could not remove.
    crate::job::drill::remove_leftovers(&docker).await;
    let shared = Shared::default();
    // Targets declared by URL are there before (and without) the first listing.
    *shared.registry.write().await = discovery::Registry::declaring(&cfg.defaults);
    for t in shared.registry.read().await.targets() {
        log_declared(&t);
    }
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (changed_tx, changed_rx) = watch::channel(0u64);
    let runner = Arc::new(Runner::new(
        docker.clone(),
        store,
        cfg.defaults(),
        cfg.concurrency,
        cfg.min_backups,
        cfg.notify.clone(),
    ));

    let disco = tokio::spawn(discovery::run(
        docker,
        cfg.docker_host.clone(),
        cfg.defaults(),
        cfg.resync_interval,
        shared.clone(),
        changed_tx,
        shutdown_rx.clone(),
    ));
    let sched = tokio::spawn(
        crate::schedule::Scheduler {
            runner: runner.clone(),
            shared: shared.clone(),
            run_on_startup: cfg.run_on_startup,
            clock: crate::schedule::wall_clock(),
        }
        .run(changed_rx, shutdown_rx.clone()),
    );
    let probe = tokio::spawn(probe_store(
        runner.store.clone(),
        probe_patience(&cfg),
        shared.clone(),
        shutdown_rx.clone(),
    ));
    let http_task = listener.map(|l| {
        tracing::info!(addr = %l.local_addr().map(|a| a.to_string()).unwrap_or_default(), "HTTP endpoints listening (/healthz, /metrics, {}).", http::STATUS_PATH);
        tokio::spawn(http::serve(l, shared.clone(), runner.clone(), shutdown_rx.clone()))
    });

    signal.await;
    tracing::info!("Shutdown requested; stopping.");
    let _ = shutdown_tx.send(true);
    let left = runner.shutdown(STOP_GRACE).await;
    if left > 0 {
        tracing::warn!(
            jobs = left,
            "Jobs did not finish cleaning up within the grace period and were aborted; prune removes what they left."
        );
    }
    // The cancelled jobs' failure notices, within what is left of compose's stop grace period.
    runner.notifier.flush(Duration::from_secs(10)).await;
    let _ = disco.await;
    let _ = sched.await;
    let _ = probe.await;
    if let Some(h) = http_task {
        match h.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "HTTP server stopped with an error."),
            Err(e) => tracing::warn!(error = %e, "HTTP server task failed."),
            Ok(Ok(())) => {}
        }
    }
    tracing::info!("pgbackup controller stopped.");
}

/// Checks the store every [`S3_PROBE_EVERY`] for `/healthz`, logging when it stops and starts
/// answering.
async fn probe_store(
    store: SharedStore,
    patience: Duration,
    shared: Shared,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(S3_PROBE_EVERY) => {}
            _ = shutdown.changed() => return,
        }
        let result = tokio::select! {
            r = store.probe(patience) => r,
            _ = shutdown.changed() => return,
        };
        let mut st = shared.s3.write().await;
        match (&result, st.last_error.is_some()) {
            (Ok(()), true) => {
                tracing::info!(destination = %store.location(), "The backup destination answers again.")
            }
            (Err(e), false) => {
                tracing::warn!(destination = %store.location(), error = %e, "Backup destination check failed; /healthz reports it.")
            }
            _ => {}
        }
        st.last_error = result.err().map(|e| e.to_string());
        st.last_check = Some(chrono::Utc::now());
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

/// A target declared by URL, as the controller starts: where it is, or why it is invalid
/// (named by the variables that set it).
fn log_declared(t: &discovery::Target) {
    match (&t.spec, &t.endpoint) {
        (discovery::Parsed::Valid { settings }, Some(e)) => tracing::info!(
            target_id = %t.target, url = %e.redacted(), schedule = %settings.schedule,
            "Target declared by URL."
        ),
        (discovery::Parsed::Invalid { errors }, _) => {
            for e in errors {
                tracing::error!(target_id = %t.target, variable = %e.label,
                    "Target is invalid and will not be backed up: {e}.");
            }
        }
        _ => {}
    }
}
