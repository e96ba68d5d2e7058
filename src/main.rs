use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use clap::{Parser, Subcommand};

use pgbackup::config::{self, Config, Defaults, LogFormat};
use pgbackup::discovery::Registry;
use pgbackup::docker::DockerClient;
use pgbackup::status::{self, DockerView, Report};
use pgbackup::{controller, exit, http};

/// Backups and restores for Postgres running in Docker Compose.
///
/// Configuration comes from the environment (see the README); every variable also accepts
/// <NAME>_FILE. Exit codes: 0 ok, 1 operation failed, 2 usage or configuration error,
/// 3 Docker or S3 unreachable or refused at start-up.
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = runtime.block_on(async {
        match cli.command {
            Command::Run => cmd_run().await,
            Command::Status { json, controller } => cmd_status(json, controller).await,
        }
    });
    ExitCode::from(code as u8)
}

fn env_map() -> Result<HashMap<String, String>, config::ConfigError> {
    config::resolve_env(std::env::vars(), |p| std::fs::read_to_string(p))
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PGBACKUP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,aws=warn,hyper=warn"));
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
    init_logging(cfg.log_format);
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
    let docker = DockerClient::connect(docker_host).await?;
    let containers = docker
        .list_labelled()
        .await
        .context("listing labelled containers")?;
    let mut reg = Registry::default();
    reg.replace_all(&containers, defaults);
    Ok(status::report(
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
    ))
}
