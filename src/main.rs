// mimalloc returns freed part buffers to the OS promptly; with glibc's malloc the sidecar's RSS
// crept up with the size of the database (BENCHMARKS.md) although its buffers are fixed.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use clap::Parser;

use pgbackup::app::status::{self, DockerView, Report};
use pgbackup::config::{self, Config, Defaults, LogFormat};
use pgbackup::discovery::Registry;
use pgbackup::engine::docker::DockerClient;
use pgbackup::{app::controller, app::http, exit};

mod commands;

use pgbackup::app::cli::{Cli, Command};

/// zstd's worker threads allocate their job buffers with the C allocator. glibc would serve
/// them from per-thread arenas and, after the first large free, stop returning such buffers to
/// the system (its mmap threshold adapts upwards), so the sidecar's memory would creep up
/// between backups. A fixed threshold keeps buffers ≥ 128 KiB in their own mappings, returned
/// on free; two arenas are plenty for a few threads. Measured with `make bench` (BENCHMARKS.md).
#[cfg(target_env = "gnu")]
fn tune_c_allocator() {
    // SAFETY: mallopt only changes allocator parameters; called before any other thread runs.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

#[cfg(not(target_env = "gnu"))]
fn tune_c_allocator() {}

fn main() -> ExitCode {
    tune_c_allocator();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = runtime.block_on(async {
        match cli.command {
            Command::Run {
                once,
                physical,
                targets,
            } => cmd_run(once, physical, targets).await,
            Command::Status { json, controller } => cmd_status(json, controller).await,
            Command::Backup {
                targets,
                all,
                physical,
                wait,
                json,
                controller,
            } => cmd_backup(targets, all, physical, wait, json, controller).await,
            Command::List { target, json } => cmd_list(target, json).await,
            Command::Drill {
                targets,
                all,
                json,
                controller,
            } => cmd_drill(targets, all, json, controller).await,
            Command::Restore {
                backup,
                from,
                to,
                to_url,
                db,
                clean,
                physical,
                in_place,
                yes,
                standby,
                auto_conf,
                post_sql,
                restore_options,
                dry_run,
                identity,
                json,
                resume,
                rollback,
            } => {
                if let Some(service) = resume {
                    return commands::finish_switch(&service, true, json).await;
                }
                if let Some(service) = rollback {
                    return commands::finish_switch(&service, false, json).await;
                }
                commands::restore(
                    commands::RestoreArgs {
                        backup: backup.unwrap_or_default(),
                        from,
                        to,
                        to_url,
                        db,
                        clean,
                        physical: physical.then_some(pgbackup::restore::physical::Options {
                            in_place,
                            yes,
                            standby,
                            auto_conf: auto_conf.clone(),
                            post_sql: post_sql.clone(),
                            keys: None,
                        }),
                        physical_only: [
                            (in_place, "--in-place"),
                            (yes, "--yes"),
                            (standby, "--standby"),
                            (auto_conf.is_some(), "--auto-conf"),
                        ]
                        .iter()
                        .filter(|(set, _)| *set)
                        .map(|(_, name)| *name)
                        .collect(),
                        post_sql: (!physical).then_some(post_sql).flatten(),
                        restore_options,
                        dry_run,
                        identity,
                    },
                    json,
                )
                .await
            }
            Command::Prune {
                targets,
                dry_run,
                json,
            } => commands::prune(targets, dry_run, json).await,
            Command::Verify {
                backup,
                all,
                from,
                identity,
                json,
            } => commands::verify(backup, all, from, identity, json).await,
            Command::Rescue {
                service,
                reset_wal,
                yes,
                json,
            } => commands::rescue(&service, reset_wal, yes, json).await,
        }
    });
    ExitCode::from(code as u8)
}

fn env_map() -> Result<HashMap<String, String>, config::ConfigError> {
    config::resolve_env(std::env::vars(), |p| std::fs::read_to_string(p))
}

/// `PGBACKUP_LOG` as a filter; a value that does not parse is a configuration error rather
/// than silently the default.
fn log_filter() -> Result<tracing_subscriber::EnvFilter, String> {
    match std::env::var("PGBACKUP_LOG") {
        Ok(v) if !v.trim().is_empty() => tracing_subscriber::EnvFilter::builder()
            .parse(&v)
            .map_err(|e| {
                format!(
                    "PGBACKUP_LOG={v:?} is not valid ({e}): expected a level or directives such as info, debug or info,pgbackup=debug"
                )
            }),
        _ => Ok(tracing_subscriber::EnvFilter::new("info,aws=warn,hyper=warn")),
    }
}

fn init_logging(format: LogFormat, filter: tracing_subscriber::EnvFilter) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

async fn cmd_run(once: bool, physical: bool, targets: Vec<String>) -> i32 {
    let cfg = match env_map().and_then(|m| Config::from_map(&m)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pgctl: configuration error: {e}");
            return exit::USAGE;
        }
    };
    let filter = match log_filter() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("pgctl: configuration error: {e}");
            return exit::USAGE;
        }
    };
    init_logging(cfg.log_format, filter);
    for name in config::unknown_variables(
        std::env::vars()
            .map(|(k, _)| k)
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str),
    ) {
        tracing::warn!(variable = %name, "Unknown variable ignored: pgbackup reads no such setting (a typo? see the README's variables).");
    }
    if once || cfg.single_shot {
        return controller::once(cfg, targets, physical).await;
    }
    match controller::run(cfg).await {
        Ok(()) => exit::OK,
        Err(e) => {
            tracing::error!("{e}");
            e.exit_code()
        }
    }
}

async fn cmd_status(json: bool, controller: Option<String>) -> i32 {
    let map = match env_map() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("pgctl: configuration error: {e}");
            return exit::USAGE;
        }
    };
    let defaults = match Defaults::from_map(&map) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("pgctl: configuration error: {e}");
            return exit::USAGE;
        }
    };
    let url = controller.unwrap_or_else(|| controller_url(map.get("PGBACKUP_HTTP_ADDR")));
    let report = match fetch_report(&url).await {
        Ok(r) => r,
        Err(why) => {
            if !json {
                eprintln!(
                    "pgctl: no controller answered at {url} ({why:#}); reading Docker directly."
                );
            }
            match direct_report(map.get("DOCKER_HOST").map(String::as_str), &defaults).await {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("pgctl: {e:#}");
                    return exit::FAILED;
                }
            }
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("report serialises")
        );
    } else {
        print!("{}", status::render(&report));
    }
    exit::OK
}

/// The controller listens on PGBACKUP_HTTP_ADDR; from inside the same container that is
/// reachable on localhost whatever interface it is bound to.
fn controller_url(addr: Option<&String>) -> String {
    let port = addr
        .and_then(|a| a.rsplit_once(':'))
        .map(|(_, p)| p.to_string())
        .unwrap_or_else(|| {
            config::DEFAULT_HTTP_ADDR
                .rsplit_once(':')
                .expect("host:port")
                .1
                .to_string()
        });
    format!("http://127.0.0.1:{port}")
}

async fn fetch_report(base: &str) -> anyhow::Result<Report> {
    let client = pgbackup::http_client()
        .timeout(Duration::from_secs(5))
        .build()?;
    let resp = client
        .get(format!(
            "{}{}",
            base.trim_end_matches('/'),
            http::STATUS_PATH
        ))
        .send()
        .await?
        .error_for_status()?;
    Ok(resp.json::<Report>().await?)
}

async fn direct_report(docker_host: Option<&str>, defaults: &Defaults) -> anyhow::Result<Report> {
    let docker = DockerClient::connect_scoped(docker_host, &defaults.scope).await?;
    let containers = docker
        .list_labelled()
        .await
        .context("listing labelled containers")?;
    let mut reg = Registry::default();
    reg.replace_all(&containers, defaults);
    let mut report = status::report(
        "docker",
        &reg.targets(),
        DockerView {
            connected: true,
            host: docker.host().to_string(),
            last_error: None,
            last_sync: Some(Utc::now()),
        },
        Utc::now(),
        defaults.timezone,
    );
    report.unfinished_restores = pgbackup::restore::physical::unfinished(&docker).await;
    Ok(report)
}

async fn cmd_backup(
    targets: Vec<String>,
    all: bool,
    physical: bool,
    wait: bool,
    json: bool,
    controller: Option<String>,
) -> i32 {
    let base = match controller_base(controller) {
        Ok(b) => b,
        Err(code) => return code,
    };
    let req = http::BackupRequest {
        targets,
        all,
        kind: if physical {
            pgbackup::model::layout::Kind::Physical
        } else {
            pgbackup::model::layout::Kind::Logical
        },
        wait,
        dry_run: true,
    };
    let say = Asking {
        command: "backup",
        nothing: "backed up",
        without: "Without a controller, back up once with `pgctl run --once [TARGET…]`.",
        what: if physical {
            "base backup"
        } else {
            "logical backup"
        },
        waits: "this waits until every backup is committed or failed",
        outcome: "the backups' outcome",
    };
    let real = http::BackupRequest {
        dry_run: false,
        ..req.clone()
    };
    let resp = match ask_twice(&base, http::BACKUPS_PATH, req, real, json, &say).await {
        Ok(r) => r,
        Err(code) => return code,
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&resp).expect("serialises")
        );
    } else {
        for o in &resp.outcomes {
            match (&o.result, o.ok) {
                (Some(r), true) => println!(
                    "ok      {}  {}  {}, {} in {:.1}s",
                    o.target,
                    r["backup_id"].as_str().unwrap_or(""),
                    if physical {
                        "base backup".to_string()
                    } else {
                        format!(
                            "{} database(s)",
                            r["databases"].as_array().map(|a| a.len()).unwrap_or(0)
                        )
                    },
                    pgbackup::table::human_bytes(r["bytes"].as_u64().unwrap_or(0)),
                    r["duration_seconds"].as_f64().unwrap_or(0.0)
                ),
                (None, true) if o.skipped.is_some() => println!(
                    "skipped {}  {}",
                    o.target,
                    o.skipped.as_deref().unwrap_or_default()
                ),
                _ => println!(
                    "{}  {}  {}",
                    if o.refused { "refused" } else { "FAILED " },
                    o.target,
                    o.error.as_deref().unwrap_or("unknown error")
                ),
            }
        }
        for u in &resp.unknown {
            eprintln!("pgctl: no valid target named {u}; see `pgctl status`");
        }
        if resp.outcomes.is_empty() && resp.unknown.is_empty() {
            eprintln!("pgctl: no valid targets to back up; see `pgctl status`");
        }
    }
    if !resp.unknown.is_empty() {
        exit::USAGE
    } else if resp.outcomes.iter().all(|o| o.ok) && !resp.outcomes.is_empty() {
        exit::OK
    } else {
        exit::FAILED
    }
}

/// The controller to ask: `--controller`, else this container's `PGBACKUP_HTTP_ADDR` on
/// localhost; a configuration error is printed and its exit code returned.
fn controller_base(controller: Option<String>) -> Result<String, i32> {
    match env_map() {
        Ok(map) => Ok(controller.unwrap_or_else(|| controller_url(map.get("PGBACKUP_HTTP_ADDR")))),
        Err(e) => {
            eprintln!("pgctl: configuration error: {e}");
            Err(exit::USAGE)
        }
    }
}

/// POSTs `req` to the controller at `base` and reads its answer. No overall timeout: a job takes
/// as long as it takes (each has its own limit).
async fn ask_controller<Q: serde::Serialize>(
    base: &str,
    path: &str,
    req: Q,
) -> anyhow::Result<http::BackupResponse> {
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let client = pgbackup::http_client()
        .connect_timeout(Duration::from_secs(5))
        .build()?;
    let r = client
        .post(url)
        .json(&req)
        .send()
        .await?
        .error_for_status()?;
    Ok(r.json::<http::BackupResponse>().await?)
}

/// What `pgctl backup` and `pgctl drill` say around their calls to the controller.
struct Asking<'a> {
    command: &'a str,
    /// "Nothing was …".
    nothing: &'a str,
    /// What to do without a controller, if anything.
    without: &'a str,
    what: &'a str,
    waits: &'a str,
    outcome: &'a str,
}

/// Asks the controller twice: `names` (a dry run: an unknown name is an error before anything
/// starts), then `real`. The answer, or the exit code once the reason is printed.
async fn ask_twice<Q: serde::Serialize>(
    base: &str,
    path: &str,
    names: Q,
    real: Q,
    json: bool,
    say: &Asking<'_>,
) -> Result<http::BackupResponse, i32> {
    let chosen = match ask_controller(base, path, names).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "pgctl: no controller answered at {base} ({e:#}); `pgctl {c}` runs through the controller started by `pgctl run` (docker compose exec backup pgctl {c} …). {}",
                say.without,
                c = say.command
            );
            return Err(exit::FAILED);
        }
    };
    for u in &chosen.unknown {
        eprintln!(
            "pgctl: no valid target named {u}; see `pgctl status`. Nothing was {}.",
            say.nothing
        );
    }
    if !chosen.unknown.is_empty() {
        return Err(exit::USAGE);
    }
    if chosen.outcomes.is_empty() {
        eprintln!("pgctl: no valid targets; see `pgctl status`");
        return Err(exit::FAILED);
    }
    if !json {
        let names: Vec<&str> = chosen.outcomes.iter().map(|o| o.target.as_str()).collect();
        eprintln!(
            "pgctl: {} of {} ({})…",
            say.what,
            names.join(", "),
            say.waits
        );
    }
    ask_controller(base, path, real).await.map_err(|e| {
        eprintln!(
            "pgctl: the controller at {base} stopped answering ({e:#}); see `pgctl status` for {}.",
            say.outcome
        );
        exit::FAILED
    })
}

async fn cmd_drill(targets: Vec<String>, all: bool, json: bool, controller: Option<String>) -> i32 {
    let base = match controller_base(controller) {
        Ok(b) => b,
        Err(code) => return code,
    };
    let req = http::DrillRequest {
        targets,
        all,
        dry_run: true,
    };
    let say = Asking {
        command: "drill",
        nothing: "drilled",
        without: "",
        what: "restore drill",
        waits: "restores the latest backups into a throwaway server; this waits until they are checked",
        outcome: "the drills' outcome",
    };
    let real = http::DrillRequest {
        dry_run: false,
        ..req.clone()
    };
    let resp = match ask_twice(&base, http::DRILLS_PATH, req, real, json, &say).await {
        Ok(r) => r,
        Err(code) => return code,
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&resp).expect("serialises")
        );
    } else {
        for o in &resp.outcomes {
            let drills = o
                .result
                .as_ref()
                .and_then(|r| r.as_array())
                .cloned()
                .unwrap_or_default();
            if drills.is_empty() {
                println!(
                    "refused  {}  {}",
                    o.target,
                    o.error.as_deref().unwrap_or("unknown error")
                );
            }
            for d in &drills {
                let kind = d["kind"].as_str().unwrap_or("");
                let backup = d["backup_id"].as_str().unwrap_or("-");
                if d["ok"].as_bool().unwrap_or(false) {
                    let checked = if kind == "physical" {
                        "cluster identity and databases as recorded".to_string()
                    } else {
                        format!(
                            "{} database(s), {} table(s), {} row(s) as recorded",
                            d["databases"].as_array().map(|a| a.len()).unwrap_or(0),
                            d["tables_checked"].as_u64().unwrap_or(0),
                            d["rows_checked"].as_u64().unwrap_or(0)
                        )
                    };
                    println!(
                        "passed  {}  {kind}  {backup}  {checked}, in {:.1}s",
                        o.target,
                        d["duration_seconds"].as_f64().unwrap_or(0.0)
                    );
                    if let Some(note) = d["note"].as_str() {
                        println!("        note: {note}");
                    }
                } else {
                    println!(
                        "FAILED  {}  {kind}  {backup}  {}",
                        o.target,
                        d["error"].as_str().unwrap_or("unknown error")
                    );
                }
            }
        }
    }
    if resp.outcomes.iter().all(|o| o.ok) {
        exit::OK
    } else {
        exit::FAILED
    }
}

async fn cmd_list(target: Option<String>, json: bool) -> i32 {
    let cfg = match env_map().and_then(|m| Config::from_map(&m)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pgctl: configuration error: {e}");
            return exit::USAGE;
        }
    };
    let store = pgbackup::store::open(&cfg.destination).await;
    let (mut manifests, problems) =
        match pgbackup::store::catalog::committed(store.as_ref(), None).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("pgctl: {e}");
                return exit::FAILED;
            }
        };
    if let Some(t) = &target {
        manifests.retain(|m| &m.target == t || m.target.rsplit('/').next() == Some(t.as_str()));
    }
    for p in &problems {
        eprintln!("pgctl: warning: {p}");
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&manifests).expect("serialises")
        );
        return exit::OK;
    }
    print!("{}", render_list(&manifests, Utc::now()));
    exit::OK
}

fn render_list(
    manifests: &[pgbackup::model::manifest::Manifest],
    now: chrono::DateTime<Utc>,
) -> String {
    let mut rows = vec![vec![
        "ID".to_string(),
        "TARGET".into(),
        "DATABASES".into(),
        "SIZE".into(),
        "AGE".into(),
        "ENCRYPTED".into(),
    ]];
    for m in manifests {
        rows.push(vec![
            m.backup_id.to_string(),
            m.target.clone(),
            if m.kind == pgbackup::model::layout::Kind::Physical {
                "(whole cluster)".to_string()
            } else {
                m.databases.join(",")
            },
            pgbackup::table::human_bytes(m.size()),
            human_age(now - m.finished_at),
            m.encryption
                .as_ref()
                .map_or("-".to_string(), |e| e.method.clone()),
        ]);
    }
    let mut out: String = pgbackup::table::lines(&rows)
        .iter()
        .map(|l| format!("{l}\n"))
        .collect();
    if manifests.is_empty() {
        out.push_str("(no committed backups)\n");
    }
    out
}

fn human_age(d: chrono::Duration) -> String {
    let s = d.num_seconds().max(0);
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}
