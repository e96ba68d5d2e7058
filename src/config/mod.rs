//! Controller configuration: the environment variables of the README's "Configuration".
//!
//! [`Config::from_map`] is a pure function of a name → value map so every rule is unit-tested;
//! [`Config::from_env`] is the thin shell that reads the process environment and resolves the
//! `<NAME>_FILE` variants (Docker secrets) into that map.

pub mod declared;
pub mod endpoint;
pub mod labels;
pub mod scope;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use chrono_tz::Tz;
use serde::Deserialize;

use std::sync::Arc;

use crate::model::KeepPolicy;
use crate::model::Schedule;
use crate::model::encryption::{Identities, Recipients};
use crate::notify::{self, ping::PingUrl};

/// A configuration error always names the variable and the expected form.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{name} is required: {hint}")]
    Missing { name: String, hint: String },
    #[error("{name}={value:?} is not valid: expected {expected}")]
    Invalid {
        name: String,
        value: String,
        expected: String,
    },
    #[error("{name} and {name}_FILE are both set: set only one of them")]
    Both { name: String },
    #[error("{name}_FILE={path:?} cannot be read: {reason}")]
    File {
        name: String,
        path: String,
        reason: String,
    },
    #[error("{0}")]
    Other(String),
}

fn invalid(name: &str, value: &str, expected: &str) -> ConfigError {
    ConfigError::Invalid {
        name: name.to_string(),
        value: value.to_string(),
        expected: expected.to_string(),
    }
}

/// `S3_TIMEOUT` when unset: generous for a healthy endpoint, short enough that a stopped one
/// is noticed (the start-up check, `pgctl list`) in well under a minute.
pub const DEFAULT_S3_TIMEOUT: Duration = Duration::from_secs(20);

/// Every variable we read. `<NAME>_FILE` is accepted for each of them.
pub const VARIABLES: &[&str] = &[
    "PGBACKUP_DESTINATION",
    "S3_BUCKET",
    "S3_ENDPOINT",
    "S3_REGION",
    "S3_ACCESS_KEY_ID",
    "S3_SECRET_ACCESS_KEY",
    "S3_FORCE_PATH_STYLE",
    "S3_PREFIX",
    "S3_STORAGE_CLASS",
    "S3_OBJECT_LOCK",
    "S3_TIMEOUT",
    "PGBACKUP_SCHEDULE",
    "PGBACKUP_DRILL_SCHEDULE",
    "PGBACKUP_AGE_RECIPIENTS",
    "PGBACKUP_AGE_IDENTITY",
    "PGBACKUP_CONCURRENCY",
    "PGBACKUP_RUN_ON_STARTUP",
    "PGBACKUP_SKIP_IF_NEWER_THAN",
    "PGBACKUP_RESYNC_INTERVAL",
    "TZ",
    "RETENTION_KEEP_LAST",
    "RETENTION_KEEP_HOURLY",
    "RETENTION_KEEP_DAILY",
    "RETENTION_KEEP_WEEKLY",
    "RETENTION_KEEP_MONTHLY",
    "RETENTION_KEEP_YEARLY",
    "RETENTION_MIN_BACKUPS",
    "PGBACKUP_HTTP_ADDR",
    "PGBACKUP_LOG_FORMAT",
    "PGBACKUP_SCOPE",
    "PGBACKUP_NOTIFY_URLS",
    "PGBACKUP_NOTIFY_LEVEL",
    "PGBACKUP_PING_URL",
    "PGBACKUP_SINGLE_SHOT",
    "DOCKER_HOST",
];

/// Raw strings as envy sees them; every field is validated into [`Config`] afterwards so errors
/// can name the variable and the expected form (envy's own messages do neither well).
#[derive(Debug, Deserialize, Default)]
struct Raw {
    pgbackup_destination: Option<String>,
    s3_bucket: Option<String>,
    s3_endpoint: Option<String>,
    s3_region: Option<String>,
    s3_access_key_id: Option<String>,
    s3_secret_access_key: Option<String>,
    s3_force_path_style: Option<String>,
    s3_prefix: Option<String>,
    s3_storage_class: Option<String>,
    s3_object_lock: Option<String>,
    s3_timeout: Option<String>,
    pgbackup_schedule: Option<String>,
    pgbackup_drill_schedule: Option<String>,
    pgbackup_age_recipients: Option<String>,
    pgbackup_age_identity: Option<String>,
    /// Where `pgbackup_age_identity` was read from, for messages.
    pgbackup_age_identity_file: Option<String>,
    pgbackup_concurrency: Option<String>,
    pgbackup_run_on_startup: Option<String>,
    pgbackup_skip_if_newer_than: Option<String>,
    pgbackup_resync_interval: Option<String>,
    tz: Option<String>,
    retention_keep_last: Option<String>,
    retention_keep_hourly: Option<String>,
    retention_keep_daily: Option<String>,
    retention_keep_weekly: Option<String>,
    retention_keep_monthly: Option<String>,
    retention_keep_yearly: Option<String>,
    retention_min_backups: Option<String>,
    pgbackup_http_addr: Option<String>,
    pgbackup_log_format: Option<String>,
    pgbackup_scope: Option<String>,
    pgbackup_notify_urls: Option<String>,
    pgbackup_notify_level: Option<String>,
    pgbackup_ping_url: Option<String>,
    pgbackup_single_shot: Option<String>,
    docker_host: Option<String>,
}

#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Secret {
        Secret(s)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    pub bucket: String,
    /// `None` means AWS itself.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// `None` means the standard AWS credential chain.
    pub credentials: Option<(String, Secret)>,
    pub force_path_style: bool,
    /// Normalised: no leading or trailing `/`; empty when unset.
    pub prefix: String,
    pub storage_class: Option<String>,
    pub object_lock: bool,
    /// The longest wait for one S3 request attempt (a part upload gets this per
    /// 32 MiB of its size): an endpoint that stops answering fails the
    /// request instead of hanging it.
    pub timeout: Duration,
}

/// Where backups are kept (`PGBACKUP_DESTINATION`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// An S3 bucket (the default), with the `S3_*` settings.
    S3(S3Config),
    /// A directory mounted into the sidecar.
    Local(std::path::PathBuf),
}

impl Destination {
    /// The key prefix target folders are under (`S3_PREFIX`; none on a directory).
    pub fn prefix(&self) -> &str {
        match self {
            Destination::S3(c) => &c.prefix,
            Destination::Local(_) => "",
        }
    }

    /// Where backups are, for messages: `s3://bucket` or the directory.
    pub fn location(&self) -> String {
        match self {
            Destination::S3(c) => format!("s3://{}", c.bucket),
            Destination::Local(p) => p.display().to_string(),
        }
    }

    /// The S3 settings, when the destination is S3.
    pub fn s3(&self) -> Option<&S3Config> {
        match self {
            Destination::S3(c) => Some(c),
            Destination::Local(_) => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub destination: Destination,
    /// What every target gets unless its labels say otherwise (schedules, time zone,
    /// retention, scope, encryption, skip window).
    pub defaults: Defaults,
    pub concurrency: usize,
    pub run_on_startup: bool,
    pub resync_interval: Duration,
    pub min_backups: u32,
    /// `None` disables the HTTP server.
    pub http_addr: Option<SocketAddr>,
    pub log_format: LogFormat,
    pub docker_host: Option<String>,
    /// Notification services and the default ping URL.
    pub notify: notify::Settings,
    /// `PGBACKUP_SINGLE_SHOT`: `pgctl run` behaves as `pgctl run --once`.
    pub single_shot: bool,
}

pub const DEFAULT_HTTP_ADDR: &str = "0.0.0.0:8080";

/// Non-S3 settings needed by commands that do not talk to S3 (`status`).
#[derive(Debug, Clone)]
pub struct Defaults {
    pub schedule: Schedule,
    /// `PGBACKUP_DRILL_SCHEDULE`: restore drills of every target (default off).
    pub drill_schedule: Schedule,
    pub timezone: Tz,
    pub keep: KeepPolicy,
    /// `PGBACKUP_SCOPE`: which containers this sidecar acts on.
    pub scope: scope::Setting,
    /// `PGBACKUP_AGE_RECIPIENTS`: every backup is encrypted to these (a label overrides).
    pub age_recipients: Option<Recipients>,
    /// `PGBACKUP_AGE_IDENTITY_FILE`: what decrypts backups for restores, verify, drills and
    /// copies (`--identity` overrides). Usually unset in the sidecar that writes backups.
    pub age_identity: Option<Arc<Identities>>,
    /// `PGBACKUP_SKIP_IF_NEWER_THAN`: start-up, `--all` and single-shot runs skip a target
    /// whose newest committed backup of the kind is younger (a label overrides).
    pub skip_if_newer_than: Option<Duration>,
    /// Targets declared by `PGBACKUP_TARGET_<NAME>_URL` (databases outside Docker).
    pub declared: Vec<declared::Declared>,
}

impl Config {
    /// Reads the process environment, resolving `<NAME>_FILE` variants.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_map(&resolve_env(std::env::vars(), |p| {
            std::fs::read_to_string(p)
        })?)
    }

    /// Pure: builds and validates the configuration from a map of variables.
    pub fn from_map(map: &HashMap<String, String>) -> Result<Config, ConfigError> {
        let mut raw = parse_raw(map)?;
        // Label defaults first: the rest consumes `raw` field by field.
        let defaults = Defaults::from_raw(&raw, map)?;
        let destination = destination(&mut raw)?;
        let notify = notify_settings(&mut raw)?;
        let single_shot = parse_bool(
            "PGBACKUP_SINGLE_SHOT",
            raw.pgbackup_single_shot.take(),
            false,
        )?;
        let concurrency = parse_num("PGBACKUP_CONCURRENCY", raw.pgbackup_concurrency, 2, 1)?;
        let run_on_startup = parse_bool(
            "PGBACKUP_RUN_ON_STARTUP",
            raw.pgbackup_run_on_startup,
            false,
        )?;
        let resync_interval = match non_empty(raw.pgbackup_resync_interval) {
            None => Duration::from_secs(30),
            Some(v) => humantime::parse_duration(&v)
                .ok()
                .filter(|d| *d >= Duration::from_secs(1))
                .ok_or_else(|| {
                    invalid(
                        "PGBACKUP_RESYNC_INTERVAL",
                        &v,
                        "a duration of at least 1s such as 30s or 5m",
                    )
                })?,
        };
        let min_backups =
            parse_num("RETENTION_MIN_BACKUPS", raw.retention_min_backups, 1, 1)? as u32;
        let http_addr = match raw.pgbackup_http_addr {
            None => Some(DEFAULT_HTTP_ADDR.parse().expect("valid default")),
            Some(v) if v.trim().is_empty() || v == "off" => None,
            Some(v) => Some(v.parse::<SocketAddr>().map_err(|_| {
                invalid(
                    "PGBACKUP_HTTP_ADDR",
                    &v,
                    "host:port such as 0.0.0.0:8080, or off",
                )
            })?),
        };
        let log_format = match non_empty(raw.pgbackup_log_format).as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => return Err(invalid("PGBACKUP_LOG_FORMAT", other, "text or json")),
        };
        Ok(Config {
            destination,
            defaults,
            concurrency: concurrency as usize,
            run_on_startup,
            resync_interval,
            min_backups,
            http_addr,
            log_format,
            docker_host: non_empty(raw.docker_host),
            notify,
            single_shot,
        })
    }

    pub fn defaults(&self) -> Defaults {
        self.defaults.clone()
    }
}

impl Defaults {
    /// Only the label defaults, for commands that need no S3 settings.
    pub fn from_map(map: &HashMap<String, String>) -> Result<Defaults, ConfigError> {
        Defaults::from_raw(&parse_raw(map)?, map)
    }

    fn from_raw(raw: &Raw, map: &HashMap<String, String>) -> Result<Defaults, ConfigError> {
        let keep = [
            ("RETENTION_KEEP_LAST", &raw.retention_keep_last),
            ("RETENTION_KEEP_HOURLY", &raw.retention_keep_hourly),
            ("RETENTION_KEEP_DAILY", &raw.retention_keep_daily),
            ("RETENTION_KEEP_WEEKLY", &raw.retention_keep_weekly),
            ("RETENTION_KEEP_MONTHLY", &raw.retention_keep_monthly),
            ("RETENTION_KEEP_YEARLY", &raw.retention_keep_yearly),
        ];
        let schedule = match non_empty(raw.pgbackup_schedule.clone()) {
            None => Schedule::parse("@daily").expect("valid default"),
            Some(v) => Schedule::parse(&v).map_err(|e| {
                invalid(
                    "PGBACKUP_SCHEDULE",
                    &v,
                    &format!("{} ({e})", Schedule::EXPECTED),
                )
            })?,
        };
        let drill_schedule = match non_empty(raw.pgbackup_drill_schedule.clone()) {
            None => Schedule::Off,
            Some(v) => Schedule::parse(&v).map_err(|e| {
                invalid(
                    "PGBACKUP_DRILL_SCHEDULE",
                    &v,
                    &format!("{} ({e})", Schedule::EXPECTED),
                )
            })?,
        };
        let timezone = match non_empty(raw.tz.clone()) {
            None => Tz::UTC,
            Some(v) => v.parse::<Tz>().map_err(|_| {
                invalid(
                    "TZ",
                    &v,
                    "an IANA time zone name such as UTC or Europe/Berlin",
                )
            })?,
        };
        let mut values = [None; 6];
        for (slot, (name, value)) in values.iter_mut().zip(keep) {
            if let Some(v) = non_empty(value.clone()) {
                *slot = Some(v.parse::<u32>().map_err(|_| {
                    invalid(name, &v, "a whole number of backups to keep, 0 or more")
                })?);
            }
        }
        let [last, hourly, daily, weekly, monthly, yearly] = values;
        Ok(Defaults {
            schedule,
            drill_schedule,
            timezone,
            keep: KeepPolicy {
                last,
                hourly,
                daily,
                weekly,
                monthly,
                yearly,
            },
            scope: match non_empty(raw.pgbackup_scope.clone()) {
                None => scope::Setting::Own,
                Some(v) => scope::Setting::parse(&v).map_err(|e| {
                    invalid("PGBACKUP_SCOPE", &v, &format!("{} ({e})", scope::EXPECTED))
                })?,
            },
            age_recipients: match non_empty(raw.pgbackup_age_recipients.clone()) {
                None => None,
                Some(v) => Some(
                    Recipients::parse(&v)
                        .map_err(|e| ConfigError::Other(format!("PGBACKUP_AGE_RECIPIENTS: {e}")))?,
                ),
            },
            declared: declared::read(map).0,
            skip_if_newer_than: match non_empty(raw.pgbackup_skip_if_newer_than.clone()) {
                None => None,
                Some(v) if v.eq_ignore_ascii_case("off") => None,
                Some(v) => Some(
                    humantime::parse_duration(&v)
                        .ok()
                        .filter(|d| *d >= Duration::from_secs(1))
                        .ok_or_else(|| {
                            invalid(
                                "PGBACKUP_SKIP_IF_NEWER_THAN",
                                &v,
                                "a duration of at least 1s such as 20h or 30m, or off",
                            )
                        })?,
                ),
            },
            // The message names the file, never a line of it.
            age_identity: match non_empty(raw.pgbackup_age_identity.clone()) {
                None => None,
                Some(v) => {
                    let source = match &raw.pgbackup_age_identity_file {
                        Some(path) => format!("PGBACKUP_AGE_IDENTITY_FILE={path}"),
                        None => "PGBACKUP_AGE_IDENTITY".to_string(),
                    };
                    Some(Arc::new(
                        Identities::parse(&v, &source).map_err(ConfigError::Other)?,
                    ))
                }
            },
        })
    }
}

fn parse_raw(map: &HashMap<String, String>) -> Result<Raw, ConfigError> {
    envy::from_iter::<_, Raw>(map.iter().map(|(k, v)| (k.clone(), v.clone())))
        .map_err(|e| ConfigError::Other(format!("cannot read the environment: {e}")))
}

/// Resolves `<NAME>_FILE` into `<NAME>` for every known variable. `read` is injected so the rule
/// is testable without files. A trailing newline in a secret file is not part of the secret.
/// Variables that look like ours (`PGBACKUP_*`, `S3_*`, `RETENTION_*`) but are not read: a typo
/// or an option pgbackup does not have (`PGBACKUP_LOG_FILE`). Warned about at start-up.
pub fn unknown_variables<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let names: Vec<&str> = names.into_iter().collect();
    let mut out: Vec<String> = names
        .iter()
        .filter(|n| {
            ["PGBACKUP_", "S3_", "RETENTION_"]
                .iter()
                .any(|p| n.starts_with(p))
        })
        .filter(|n| {
            let base = n.strip_suffix("_FILE").unwrap_or(n);
            !VARIABLES.contains(&base)
                && !OTHER_VARIABLES.contains(*n)
                && !n.starts_with(declared::PREFIX)
        })
        .map(|n| n.to_string())
        .collect();
    // `PGBACKUP_TARGET_*` that set nothing of a declared target (an unknown setting, a name
    // without its `_URL`).
    let declarations: HashMap<String, String> = names
        .into_iter()
        .filter(|n| n.starts_with(declared::PREFIX))
        .map(|n| {
            (
                n.strip_suffix("_URL_FILE")
                    .map_or(n.to_string(), |b| format!("{b}_URL")),
                String::new(),
            )
        })
        .collect();
    out.extend(declared::read(&declarations).1);
    out.sort();
    out
}

/// Read elsewhere than [`Config`]: the log filter (by tracing's EnvFilter) and the test
/// harness's own variables.
const OTHER_VARIABLES: &[&str] = &[
    "PGBACKUP_LOG",
    "PGBACKUP_E2E_PROJECT",
    "PGBACKUP_E2E_SCRATCH",
    "PGBACKUP_E2E_AWS_BIN",
    "PGBACKUP_IMAGE",
];

pub fn resolve_env<I, F>(vars: I, read: F) -> Result<HashMap<String, String>, ConfigError>
where
    I: IntoIterator<Item = (String, String)>,
    F: Fn(&Path) -> std::io::Result<String>,
{
    let mut map: HashMap<String, String> = vars.into_iter().collect();
    // A declared target's URL may come from a file (it holds a password).
    let urls: Vec<String> = map
        .keys()
        .filter(|k| k.starts_with(declared::PREFIX))
        .filter_map(|k| k.strip_suffix("_URL_FILE").map(|b| format!("{b}_URL")))
        .collect();
    for name in VARIABLES
        .iter()
        .copied()
        .chain(urls.iter().map(String::as_str))
    {
        let file_var = format!("{name}_FILE");
        let Some(path) = map.get(&file_var).cloned() else {
            continue;
        };
        if map.get(name).is_some_and(|v| !v.is_empty()) {
            return Err(ConfigError::Both {
                name: name.to_string(),
            });
        }
        let content = read(Path::new(&path)).map_err(|e| ConfigError::File {
            name: name.to_string(),
            path: path.clone(),
            reason: e.to_string(),
        })?;
        map.insert(
            name.to_string(),
            content.trim_end_matches(['\n', '\r']).to_string(),
        );
    }
    Ok(map)
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

pub fn parse_bool_value(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

fn parse_bool(name: &str, v: Option<String>, default: bool) -> Result<bool, ConfigError> {
    match non_empty(v) {
        None => Ok(default),
        Some(v) => parse_bool_value(&v).ok_or_else(|| invalid(name, &v, "true or false")),
    }
}

fn parse_num(name: &str, v: Option<String>, default: u64, min: u64) -> Result<u64, ConfigError> {
    match non_empty(v) {
        None => Ok(default),
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|n| *n >= min)
            .ok_or_else(|| invalid(name, &v, &format!("a whole number, at least {min}"))),
    }
}

/// `PGBACKUP_NOTIFY_URLS`, `PGBACKUP_NOTIFY_LEVEL`, `PGBACKUP_PING_URL`. The URLs hold secrets:
/// an error names the entry by its position, never its text.
fn notify_settings(raw: &mut Raw) -> Result<notify::Settings, ConfigError> {
    let mut services = Vec::new();
    let urls = non_empty(raw.pgbackup_notify_urls.take()).unwrap_or_default();
    for (i, url) in notify::service::split_list(&urls).iter().enumerate() {
        services.push(notify::service::parse(url).map_err(|why| {
            invalid(
                "PGBACKUP_NOTIFY_URLS",
                &format!("(entry {} of the list, not shown)", i + 1),
                &why,
            )
        })?);
    }
    let level = match non_empty(raw.pgbackup_notify_level.take()) {
        None => notify::Level::default(),
        Some(v) => notify::Level::parse(&v)
            .ok_or_else(|| invalid("PGBACKUP_NOTIFY_LEVEL", &v, notify::Level::EXPECTED))?,
    };
    let ping = match non_empty(raw.pgbackup_ping_url.take()) {
        None => None,
        Some(v) => Some(
            PingUrl::parse(&v).map_err(|why| invalid("PGBACKUP_PING_URL", "(not shown)", &why))?,
        ),
    };
    Ok(notify::Settings {
        services,
        level,
        ping,
    })
}

/// `PGBACKUP_DESTINATION`: unset or `s3` for the S3 bucket of the `S3_*` settings, or an
/// absolute path (`/backups`, also `file:///backups`) of a directory mounted into the sidecar.
fn destination(raw: &mut Raw) -> Result<Destination, ConfigError> {
    let value = non_empty(raw.pgbackup_destination.take());
    let Some(v) = value.filter(|v| v != "s3") else {
        return Ok(Destination::S3(s3_config(raw)?));
    };
    let path = v.strip_prefix("file://").unwrap_or(&v);
    let p = Path::new(path);
    if !p.is_absolute()
        || p.components().any(|c| {
            matches!(
                c,
                std::path::Component::ParentDir | std::path::Component::CurDir
            )
        })
    {
        return Err(invalid(
            "PGBACKUP_DESTINATION",
            &v,
            "s3, or the absolute path of a directory mounted into the sidecar such as /backups",
        ));
    }
    Ok(Destination::Local(p.to_path_buf()))
}

fn s3_config(raw: &mut Raw) -> Result<S3Config, ConfigError> {
    let bucket = non_empty(raw.s3_bucket.take()).ok_or_else(|| ConfigError::Missing {
        name: "S3_BUCKET".into(),
        hint: "set it to the name of the bucket that receives the backups".into(),
    })?;
    let endpoint = non_empty(raw.s3_endpoint.take());
    if let Some(e) = &endpoint
        && !reqwest::Url::parse(e).is_ok_and(|u| {
            matches!(u.scheme(), "http" | "https") && u.host_str().is_some_and(|h| !h.is_empty())
        })
    {
        return Err(invalid(
            "S3_ENDPOINT",
            e,
            "an URL such as http://garage:3900 or https://s3.eu-central-003.backblazeb2.com",
        ));
    }
    let credentials = match (
        non_empty(raw.s3_access_key_id.take()),
        non_empty(raw.s3_secret_access_key.take()),
    ) {
        (Some(id), Some(secret)) => Some((id, Secret(secret))),
        (None, None) => None,
        (Some(_), None) => {
            return Err(ConfigError::Missing {
                    name: "S3_SECRET_ACCESS_KEY".into(),
                    hint: "S3_ACCESS_KEY_ID is set, so its secret is needed too (or unset both to use the AWS credential chain)".into(),
                });
        }
        (None, Some(_)) => {
            return Err(ConfigError::Missing {
                    name: "S3_ACCESS_KEY_ID".into(),
                    hint: "S3_SECRET_ACCESS_KEY is set, so its key id is needed too (or unset both to use the AWS credential chain)".into(),
                });
        }
    };
    // Path-style addressing is what self-hosted S3 (Garage, MinIO) serves without DNS set-up,
    // so it is the default whenever a custom endpoint is configured.
    let force_path_style = parse_bool(
        "S3_FORCE_PATH_STYLE",
        raw.s3_force_path_style.take(),
        endpoint.is_some(),
    )?;
    let prefix = match non_empty(raw.s3_prefix.take()) {
        None => String::new(),
        Some(p) => {
            let trimmed = p.trim_matches('/').to_string();
            if trimmed
                .split('/')
                .any(|s| s.is_empty() || s == "." || s == "..")
            {
                return Err(invalid(
                    "S3_PREFIX",
                    &p,
                    "a key prefix such as backups/prod (no empty, . or .. segments)",
                ));
            }
            trimmed
        }
    };
    let storage_class = non_empty(raw.s3_storage_class.take());
    if let Some(sc) = &storage_class
        && !sc
            .chars()
            .all(|c| c.is_ascii_uppercase() || c == '_' || c.is_ascii_digit())
    {
        return Err(invalid(
            "S3_STORAGE_CLASS",
            sc,
            "an S3 storage class such as STANDARD, STANDARD_IA or GLACIER_IR",
        ));
    }
    let object_lock = parse_bool("S3_OBJECT_LOCK", raw.s3_object_lock.take(), false)?;
    let timeout = match non_empty(raw.s3_timeout.take()) {
        None => DEFAULT_S3_TIMEOUT,
        Some(v) => humantime::parse_duration(&v)
            .ok()
            .filter(|d| *d >= Duration::from_secs(1))
            .ok_or_else(|| {
                invalid(
                    "S3_TIMEOUT",
                    &v,
                    "a duration of at least 1s such as 30s or 2m",
                )
            })?,
    };

    Ok(S3Config {
        bucket,
        endpoint,
        region: non_empty(raw.s3_region.take()),
        credentials,
        force_path_style,
        prefix,
        storage_class,
        object_lock,
        timeout,
    })
}

/// A printable, secret-free view of the configuration for `status` and the start-up log.
pub fn describe(cfg: &Config) -> BTreeMap<&'static str, String> {
    let mut m = BTreeMap::new();
    match &cfg.destination {
        Destination::S3(s3) => {
            m.insert("destination", "s3".to_string());
            m.insert("bucket", s3.bucket.clone());
            m.insert(
                "endpoint",
                s3.endpoint.clone().unwrap_or_else(|| "AWS".to_string()),
            );
            m.insert("prefix", s3.prefix.clone());
            m.insert(
                "s3_timeout",
                humantime::format_duration(s3.timeout).to_string(),
            );
            m.insert(
                "credentials",
                match &s3.credentials {
                    Some((id, _)) => format!("access key {id}"),
                    None => "AWS default chain".to_string(),
                },
            );
        }
        Destination::Local(root) => {
            m.insert("destination", root.display().to_string());
        }
    }
    m.insert("schedule", cfg.defaults.schedule.to_string());
    m.insert("timezone", cfg.defaults.timezone.to_string());
    m.insert("concurrency", cfg.concurrency.to_string());
    if !cfg.notify.services.is_empty() {
        let shown: Vec<String> = cfg.notify.services.iter().map(|s| s.shown()).collect();
        m.insert("notify", shown.join(", "));
        m.insert(
            "notify_level",
            format!("{:?}", cfg.notify.level).to_lowercase(),
        );
    }
    if let Some(p) = &cfg.notify.ping {
        m.insert("ping", p.shown());
    }
    m
}

#[cfg(test)]
mod tests;
