//! HTTP endpoints of `pgctl run` on `PGBACKUP_HTTP_ADDR`: health, status, metrics, and manual
//! backups (so `pgctl backup` shares the controller's locks and never overlaps a scheduled run)
//! and restore drills (`pgctl drill`, in the same job slots).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::app::status;
use crate::discovery::Shared;
use crate::job::runner::{JobResult, RunError, Runner, Trigger};
use crate::model::layout::Kind;

#[derive(Clone)]
struct AppState {
    shared: Shared,
    runner: Arc<Runner>,
}

pub const STATUS_PATH: &str = "/v1/status";
pub const BACKUPS_PATH: &str = "/v1/backups";
pub const DRILLS_PATH: &str = "/v1/drills";

/// Binds first, so a port conflict fails start-up with a clear message.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    shared: Shared,
    runner: Arc<Runner>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route(STATUS_PATH, get(status_json))
        .route(BACKUPS_PATH, post(backups))
        .route(DRILLS_PATH, post(drills))
        .with_state(AppState { shared, runner });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await
}

/// 200 when the Docker daemon and the backup destination both answer; 503 naming what does not
/// (`s3: …` for a bucket, `destination: …` for a directory).
async fn healthz(State(s): State<AppState>) -> impl IntoResponse {
    let d = s.shared.docker.read().await.clone();
    let s3 = s.shared.s3.read().await.clone();
    let mut problems = Vec::new();
    if !d.connected {
        problems.push(format!(
            "docker not connected: {}",
            d.last_error.unwrap_or_else(|| "not synced yet".into())
        ));
    }
    if let Some(e) = s3.last_error {
        let what = if s.runner.store.location().starts_with("s3://") {
            "s3"
        } else {
            "destination"
        };
        problems.push(format!("{what}: {e}"));
    }
    if problems.is_empty() {
        (StatusCode::OK, "ok\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{}\n", problems.join("\n")),
        )
    }
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.runner.metrics.encode(),
    )
}

async fn status_json(State(s): State<AppState>) -> impl IntoResponse {
    let targets = s.shared.registry.read().await.targets();
    let docker = s.shared.docker.read().await.clone();
    let mut report = status::report(
        "controller",
        &targets,
        docker.into(),
        Utc::now(),
        s.runner.tz,
    );
    report.not_opted_in = s.shared.near_misses.read().await.clone();
    if let Some(docker) = &s.runner.docker {
        report.unfinished_restores = crate::restore::physical::unfinished(docker).await;
    }
    let copies = s.runner.syncs.read().await;
    report.syncs = s
        .shared
        .syncs
        .read()
        .await
        .iter()
        .map(|d| {
            let mut v = serde_json::to_value(d).expect("destinations serialise");
            if let Some(spec) = d.settings() {
                v["next_run"] =
                    serde_json::json!(spec.schedule_parsed.next_after(Utc::now(), s.runner.tz));
            }
            if let Some(st) = copies.get(&d.destination.to_string()) {
                v["run"] = serde_json::to_value(st).expect("copy state serialises");
            }
            v
        })
        .collect();
    drop(copies);
    let runs = s.runner.state.read().await;
    for t in report.targets.iter_mut() {
        if let Some(st) = t["target"].as_str().and_then(|k| runs.get(k)) {
            t["run"] = serde_json::to_value(st).expect("run state serialises");
        }
    }
    Json(report)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupRequest {
    /// Target names (`project/service`, or the service alone when unambiguous); empty with
    /// `all` = every valid target.
    pub targets: Vec<String>,
    pub all: bool,
    pub kind: Kind,
    /// Wait for a running job of the same target instead of refusing.
    pub wait: bool,
    /// Only resolve the names: `outcomes` lists the chosen targets, nothing runs.
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct BackupOutcome {
    pub target: String,
    pub ok: bool,
    pub refused: bool,
    /// Why nothing ran although nothing failed (a recent backup, `skip_if_newer_than`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct BackupResponse {
    pub outcomes: Vec<BackupOutcome>,
    /// Names that matched no valid target.
    pub unknown: Vec<String>,
}

async fn backups(State(s): State<AppState>, Json(req): Json<BackupRequest>) -> impl IntoResponse {
    let targets = s.shared.registry.read().await.targets();
    let (chosen, unknown) = crate::discovery::choose(&targets, &req.targets, req.all);
    if req.dry_run {
        return Json(BackupResponse {
            outcomes: chosen
                .iter()
                .map(|t| BackupOutcome {
                    target: t.target.to_string(),
                    ok: true,
                    refused: false,
                    skipped: None,
                    result: None,
                    error: None,
                })
                .collect(),
            unknown,
        });
    }
    let jobs = chosen.into_iter().map(|t| {
        let runner = s.runner.clone();
        let kind = req.kind;
        let wait = req.wait;
        let (all, names) = (req.all, &req.targets);
        async move {
            // A task the runner owns: a client that goes away (Ctrl-C on `pgctl backup`) does
            // not cut the job off half-way; it ends, cleans up and is recorded like any other.
            // `--all` skips a target backed up recently (skip_if_newer_than); a target the
            // request names always runs.
            let named = names.iter().any(|n| t.target.matches(n));
            let rx = if all && !named {
                runner.submit_unless_recent(t.clone(), kind, Trigger::Manual, wait)
            } else {
                runner.submit(t.clone(), kind, Trigger::Manual, wait)
            };
            let r = rx
                .await
                .unwrap_or_else(|_| Err(RunError::Crashed("the job was aborted".into())));
            match r {
                Ok(res) => outcome(&t.target.to_string(), res),
                Err(e @ RunError::Recent { .. }) => BackupOutcome {
                    target: t.target.to_string(),
                    ok: true,
                    refused: false,
                    skipped: Some(e.to_string()),
                    result: None,
                    error: None,
                },
                Err(e) => BackupOutcome {
                    target: t.target.to_string(),
                    ok: false,
                    refused: true,
                    skipped: None,
                    result: None,
                    error: Some(e.to_string()),
                },
            }
        }
    });
    let outcomes = futures_util::future::join_all(jobs).await;
    Json(BackupResponse { outcomes, unknown })
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrillRequest {
    /// Target names, as for backups; empty with `all` = every valid target.
    pub targets: Vec<String>,
    pub all: bool,
    /// Only resolve the names.
    #[serde(default)]
    pub dry_run: bool,
}

/// Runs the drills asked for (each a task the runner owns) and answers when all have ended;
/// each outcome's `result` is the list of its target's drills (one per backup kind).
async fn drills(State(s): State<AppState>, Json(req): Json<DrillRequest>) -> impl IntoResponse {
    let targets = s.shared.registry.read().await.targets();
    let (chosen, unknown) = crate::discovery::choose(&targets, &req.targets, req.all);
    let jobs = chosen.into_iter().map(|t| {
        let runner = s.runner.clone();
        let dry_run = req.dry_run;
        async move {
            let target = t.target.to_string();
            if dry_run {
                return BackupOutcome {
                    target,
                    ok: true,
                    refused: false,
                    skipped: None,
                    result: None,
                    error: None,
                };
            }
            match runner
                .submit_drill(t, Trigger::Manual)
                .await
                .unwrap_or_else(|_| Err(RunError::Crashed("the drill was aborted".into())))
            {
                Ok(results) => BackupOutcome {
                    target,
                    ok: results.iter().all(|r| r.ok),
                    refused: false,
                    skipped: None,
                    error: {
                        let errors: Vec<String> = results
                            .iter()
                            .filter_map(|r| r.error.as_ref().map(|e| format!("{}: {e}", r.kind)))
                            .collect();
                        (!errors.is_empty()).then(|| errors.join("; "))
                    },
                    result: Some(serde_json::to_value(results).expect("results serialise")),
                },
                Err(e) => BackupOutcome {
                    target,
                    ok: false,
                    refused: true,
                    skipped: None,
                    result: None,
                    error: Some(e.to_string()),
                },
            }
        }
    });
    let outcomes = futures_util::future::join_all(jobs).await;
    Json(BackupResponse { outcomes, unknown })
}

fn outcome(target: &str, r: JobResult) -> BackupOutcome {
    BackupOutcome {
        target: target.to_string(),
        ok: r.ok,
        refused: false,
        skipped: None,
        error: r.error.clone(),
        result: Some(serde_json::to_value(r).expect("result serialises")),
    }
}
