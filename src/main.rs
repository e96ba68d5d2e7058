// mimalloc returns freed part buffers to the OS promptly; with glibc's malloc the sidecar's RSS
// crept up with the size of the database (BENCHMARKS.md) although its buffers are fixed.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use clap::{Parser, Subcommand};

use pgbackup::app::status::{self, DockerView, Report};
use pgbackup::config::{self, Config, Defaults, LogFormat};
use pgbackup::discovery::Registry;
use pgbackup::engine::docker::DockerClient;
use pgbackup::{app::controller, app::http, exit};

mod commands;

/// Backups and restores for Postgres running in Docker Compose.
///
/// Configuration comes from the environment (see the README); every variable also accepts
/// <NAME>_FILE. Exit codes: 0 ok, 1 operation failed, 2 usage or configuration error,
/// 3 Docker or the backup destination unreachable or refused at start-up, 4 refused before
/// changing anything (a restore over data without --clean, an incompatible Postgres version).
#[derive(Parser)]
#[command(name = "pgctl", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller: discover labelled Postgres containers and back them up on schedule.
    Run,
    /// Back up targets now, through the running controller (never overlapping a scheduled run).
    Backup {
        /// Targets (`project/service`, or just the service); see `pgctl status`.
        #[arg(
            value_name = "TARGET",
            required_unless_present = "all",
            conflicts_with = "all"
        )]
        targets: Vec<String>,
        /// Every valid target.
        #[arg(long)]
        all: bool,
        /// A physical base backup instead of logical dumps.
        #[arg(long)]
        physical: bool,
        /// Wait for a running backup of the same target instead of refusing.
        #[arg(long)]
        wait: bool,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
        /// Controller to ask (default: this container's PGBACKUP_HTTP_ADDR on localhost).
        #[arg(long, value_name = "URL")]
        controller: Option<String>,
    },
    /// List committed backups (newest last), read from the backup destination.
    List {
        /// Only this target (`project/service`, or just the service).
        target: Option<String>,
        /// Print JSON (the manifests) for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Restore a backup: logical into a running Postgres container, all or nothing; or
    /// physical (--physical) into a new volume the compose service is switched onto.
    ///
    /// BACKUP is `latest`, a backup id (see `pgctl list`) or a key (folder, manifest or one
    /// object). Every database is loaded into a new database and all of them take their names
    /// in one transaction, only after every object arrived with the right SHA-256 and every
    /// statement ran; on any failure the target is left as it was.
    /// With --physical the service keeps its old volume until the new one is unpacked,
    /// verified and started; any failure switches it back, and the old volume is kept.
    /// Exit codes: 0 restored, 1 failed and rolled back, 2 bad arguments, 4 refused (data would
    /// be overwritten without --clean, the target's Postgres cannot read the backup, not enough
    /// space, compose file not reachable).
    Restore {
        /// `latest`, a backup id or a key.
        #[arg(value_name = "BACKUP", required_unless_present_any = ["resume", "rollback"])]
        backup: Option<String>,
        /// Finish a physical restore whose switch was cut off (the sidecar killed half-way):
        /// the service (`project/service` or the service) `pgctl status` names.
        #[arg(long, value_name = "SERVICE", conflicts_with_all = ["backup", "rollback"])]
        resume: Option<String>,
        /// Undo a physical restore whose switch was cut off: the service goes back to its old
        /// volume and container, the compose file to what it was.
        #[arg(long, value_name = "SERVICE", conflicts_with_all = ["backup", "resume"])]
        rollback: Option<String>,
        /// Whose backups `latest` or a bare id refer to (default: the --to target).
        #[arg(long, value_name = "TARGET")]
        from: Option<String>,
        /// Container to restore into: `project/service`, service or container name (default:
        /// the backup's own target).
        #[arg(long, value_name = "TARGET")]
        to: Option<String>,
        /// Restore only this database of the backup.
        #[arg(long, value_name = "NAME")]
        db: Option<String>,
        /// Replace databases that hold data: each is replaced as a whole by the backup's, all
        /// in one transaction at the end (the replaced ones are dropped after it).
        #[arg(long)]
        clean: bool,
        /// Restore a physical base backup: new volume, service recreated on it, compose file
        /// rewritten (the old volume is kept).
        #[arg(long)]
        physical: bool,
        /// With --physical: overwrite the service's current volume instead (needs --yes).
        #[arg(long)]
        in_place: bool,
        /// Confirms --in-place.
        #[arg(long)]
        yes: bool,
        /// With --physical: start the restored server as a standby (standby.signal).
        #[arg(long)]
        standby: bool,
        /// With --physical: replace postgresql.auto.conf with this file.
        #[arg(long, value_name = "FILE")]
        auto_conf: Option<std::path::PathBuf>,
        /// With --physical: run the *.sql files of this directory, in name order, once the
        /// restored server answers (any failure rolls the restore back).
        #[arg(long, value_name = "DIR")]
        post_sql: Option<std::path::PathBuf>,
        /// Print what would happen and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Apply retention: delete backups the policy does not keep, uncommitted leftovers older
    /// than a day, and stale multipart uploads. Prints the plan with every backup's reasons.
    Prune {
        /// Targets (`project/service`); default: every valid target the controller sees.
        #[arg(value_name = "TARGET")]
        targets: Vec<String>,
        /// Print the plan only.
        #[arg(long)]
        dry_run: bool,
        /// Print the plan as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Re-read stored objects and check their sizes and SHA-256 against the manifest.
    /// Exit 1 when any backup is damaged.
    Verify {
        /// `latest`, a backup id or a key.
        #[arg(
            value_name = "BACKUP",
            required_unless_present = "all",
            conflicts_with = "all"
        )]
        backup: Option<String>,
        /// Every committed backup in the bucket (under S3_PREFIX).
        #[arg(long)]
        all: bool,
        /// Whose backups `latest` or a bare id refer to.
        #[arg(long, value_name = "TARGET")]
        from: Option<String>,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Show every discovered target with its parsed settings or its label errors.
    Status {
        /// Print JSON for scripts instead of a table.
        #[arg(long)]
        json: bool,
        /// Controller to ask (default: this container's PGBACKUP_HTTP_ADDR on localhost).
        #[arg(long, value_name = "URL")]
        controller: Option<String>,
    },
}

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
            Command::Run => cmd_run().await,
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
            Command::Restore {
                backup,
                from,
                to,
                db,
                clean,
                physical,
                in_place,
                yes,
                standby,
                auto_conf,
                post_sql,
                dry_run,
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
                        db,
                        clean,
                        physical: physical.then_some(pgbackup::restore::physical::Options {
                            in_place,
                            yes,
                            standby,
                            auto_conf: auto_conf.clone(),
                            post_sql: post_sql.clone(),
                        }),
                        physical_only: [
                            (in_place, "--in-place"),
                            (yes, "--yes"),
                            (standby, "--standby"),
                            (auto_conf.is_some(), "--auto-conf"),
                            (post_sql.is_some(), "--post-sql"),
                        ]
                        .iter()
                        .filter(|(set, _)| *set)
                        .map(|(_, name)| *name)
                        .collect(),
                        dry_run,
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
                json,
            } => commands::verify(backup, all, from, json).await,
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

async fn cmd_run() -> i32 {
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
    let client = reqwest::Client::builder()
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
    let map = match env_map() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("pgctl: configuration error: {e}");
            return exit::USAGE;
        }
    };
    let base = controller.unwrap_or_else(|| controller_url(map.get("PGBACKUP_HTTP_ADDR")));
    let req = http::BackupRequest {
        targets,
        all,
        kind: if physical {
            pgbackup::model::layout::Kind::Physical
        } else {
            pgbackup::model::layout::Kind::Logical
        },
        wait,
    };
    if !json {
        eprintln!("pgctl: backing up (this waits until every backup is committed or failed)…");
    }
    let resp = async {
        // No overall timeout: a backup takes as long as it takes (each job has its own limit).
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()?;
        let r = client
            .post(format!(
                "{}{}",
                base.trim_end_matches('/'),
                http::BACKUPS_PATH
            ))
            .json(&req)
            .send()
            .await?
            .error_for_status()?;
        anyhow::Ok(r.json::<http::BackupResponse>().await?)
    }
    .await;
    let resp = match resp {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "pgctl: no controller answered at {base} ({e:#}); `pgctl backup` runs through the controller: is `pgctl run` running (docker compose exec backup pgctl backup …)?"
            );
            return exit::FAILED;
        }
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
                    "ok      {}  {}  {} database(s), {} in {:.1}s",
                    o.target,
                    r["backup_id"].as_str().unwrap_or(""),
                    r["databases"].as_array().map(|a| a.len()).unwrap_or(0),
                    pgbackup::table::human_bytes(r["bytes"].as_u64().unwrap_or(0)),
                    r["duration_seconds"].as_f64().unwrap_or(0.0)
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
