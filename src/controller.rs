//! `pgctl run`: start-up checks, then live discovery and the HTTP endpoints until SIGTERM.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::{self, Config};
use crate::discovery::{self, Shared};
use crate::docker::{DockerClient, DockerError};
use crate::runner::{self, Runner};
use crate::s3::{self, S3Error};
use crate::{exit, http};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("start-up check failed: {0}")]
    Docker(#[from] DockerError),
    #[error("start-up check failed: {0}")]
    S3(#[from] S3Error),
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

pub async fn run(cfg: Config) -> Result<(), StartupError> {
    tracing::info!(settings = ?config::describe(&cfg), version = env!("CARGO_PKG_VERSION"), "pgbackup controller starting.");
    let docker = DockerClient::connect(cfg.docker_host.as_deref()).await?;
    tracing::info!(host = docker.host(), "Docker daemon reachable.");
    let s3 = s3::client(&cfg.s3).await;
    s3::check_bucket(&s3, &cfg.s3, S3_PATIENCE).await?;
    tracing::info!(bucket = %cfg.s3.bucket, "S3 bucket reachable with the configured credentials.");

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

    let shared = Shared::default();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (changed_tx, changed_rx) = watch::channel(0u64);
    let runner = Arc::new(Runner::new(
        docker.clone(),
        s3,
        cfg.s3.clone(),
        cfg.timezone,
        cfg.concurrency,
        cfg.min_backups,
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
    let sched = tokio::spawn(runner::schedule_loop(
        runner.clone(),
        shared.clone(),
        changed_rx,
        cfg.run_on_startup,
        shutdown_rx.clone(),
    ));
    let http_task = listener.map(|l| {
        tracing::info!(addr = %l.local_addr().map(|a| a.to_string()).unwrap_or_default(), "HTTP endpoints listening (/healthz, /metrics, {}).", http::STATUS_PATH);
        tokio::spawn(http::serve(l, shared.clone(), runner.clone(), shutdown_rx.clone()))
    });

    wait_for_signal().await;
    tracing::info!("Shutdown requested; stopping.");
    let _ = shutdown_tx.send(true);
    let _ = disco.await;
    let _ = sched.await;
    if let Some(h) = http_task {
        match h.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "HTTP server stopped with an error."),
            Err(e) => tracing::warn!(error = %e, "HTTP server task failed."),
            Ok(Ok(())) => {}
        }
    }
    tracing::info!("pgbackup controller stopped.");
    Ok(())
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
