//! `pgbackup.*` labels (README "Labels") → a typed per-target [`TargetSpec`]. Pure.
//!
//! Every label is validated; all problems of one container are collected so the user fixes them
//! in one go. A bad label only marks its own target invalid.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::config::Defaults;
use crate::model::KeepPolicy;
use crate::model::{Compression, Databases, Format, Method, TargetId};
use crate::schedule::Schedule;

pub const PREFIX: &str = "pgbackup.";
pub const ENABLE: &str = "pgbackup.enable";

/// Every label we understand; anything else under `pgbackup.` is reported as a typo.
pub const KNOWN: &[&str] = &[
    "pgbackup.enable",
    "pgbackup.schedule",
    "pgbackup.method",
    "pgbackup.databases",
    "pgbackup.globals",
    "pgbackup.user",
    "pgbackup.format",
    "pgbackup.compression",
    "pgbackup.dump_options",
    "pgbackup.physical.schedule",
    "pgbackup.keep.last",
    "pgbackup.keep.hourly",
    "pgbackup.keep.daily",
    "pgbackup.keep.weekly",
    "pgbackup.keep.monthly",
    "pgbackup.keep.yearly",
    "pgbackup.timeout",
    "pgbackup.prefix",
];

/// Everything needed to back up one target, with defaults applied.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetSpec {
    pub schedule: String,
    #[serde(skip)]
    pub schedule_parsed: Schedule,
    pub method: Method,
    pub databases: Databases,
    pub globals: bool,
    pub user: String,
    pub format: Format,
    pub compression: Compression,
    pub dump_options: Vec<String>,
    pub physical_schedule: String,
    #[serde(skip)]
    pub physical_schedule_parsed: Schedule,
    pub keep: KeepPolicy,
    #[serde(with = "humantime_serde_compat")]
    pub timeout: Duration,
    pub prefix: String,
}

mod humantime_serde_compat {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LabelError {
    pub label: String,
    pub value: String,
    pub expected: String,
}

impl fmt::Display for LabelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "label {}={:?} is not valid: expected {}",
            self.label, self.value, self.expected
        )
    }
}

/// Whether a container opted in: `None` = no `pgbackup.enable` label or `false` (not a target);
/// `Some(Err)` = the value is not a boolean (listed as an invalid target so the typo is seen).
/// On a container that is not opted in: the labels that look like ours (`pgbackup.enabled`,
/// `pgbackup.Enable`, `PGBACKUP.schedule`…), a sign of a typo that keeps it from being backed up.
pub fn near_misses(labels: &HashMap<String, String>) -> Vec<String> {
    if labels.contains_key(ENABLE) {
        return vec![];
    }
    let mut out: Vec<String> = labels
        .keys()
        .filter(|k| {
            // `pgbackup.`, `PGBACKUP_`, `pgbackup:`…, not another tool's `pgbackup-e2e.owner`.
            let k = k.to_ascii_lowercase();
            k.strip_prefix("pgbackup")
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '_', ':']))
        })
        .cloned()
        .collect();
    out.sort();
    out
}

/// A boolean label: `true` or `false` (any case), as the README documents; anything else is an
/// error rather than a guess (`yes`, `1`, `enabled`).
fn label_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

pub fn enabled(labels: &HashMap<String, String>) -> Option<Result<(), LabelError>> {
    let v = labels.get(ENABLE)?;
    match label_bool(v) {
        Some(true) => Some(Ok(())),
        Some(false) => None,
        None => Some(Err(LabelError {
            label: ENABLE.into(),
            value: v.clone(),
            expected: "true or false".into(),
        })),
    }
}

/// Parses every `pgbackup.*` label of one container. `env` is the container's environment
/// (for the `POSTGRES_USER` default).
pub fn parse(
    id: &TargetId,
    labels: &HashMap<String, String>,
    env: &HashMap<String, String>,
    defaults: &Defaults,
) -> Result<TargetSpec, Vec<LabelError>> {
    let mut errors = Vec::new();
    let ours: BTreeMap<&str, &str> = labels
        .iter()
        .filter(|(k, _)| k.starts_with(PREFIX))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    for (k, v) in &ours {
        if !KNOWN.contains(k) {
            errors.push(LabelError {
                label: k.to_string(),
                value: v.to_string(),
                expected: format!("one of the known labels ({})", KNOWN.join(", ")),
            });
        }
    }
    if let Some(Err(e)) = enabled(labels) {
        errors.push(e);
    }
    let mut err = |label: &str, value: &str, expected: &str| {
        errors.push(LabelError {
            label: label.into(),
            value: value.into(),
            expected: expected.into(),
        })
    };
    let get = |k: &str| ours.get(k).map(|v| v.trim());

    let schedule = match get("pgbackup.schedule") {
        None => defaults.schedule.clone(),
        Some(v) => Schedule::parse(v).unwrap_or_else(|e| {
            err(
                "pgbackup.schedule",
                v,
                &format!("{} ({e})", Schedule::EXPECTED),
            );
            Schedule::Off
        }),
    };
    let physical_schedule = match get("pgbackup.physical.schedule") {
        None => Schedule::Off,
        Some(v) => Schedule::parse(v).unwrap_or_else(|e| {
            err(
                "pgbackup.physical.schedule",
                v,
                &format!("{} ({e})", Schedule::EXPECTED),
            );
            Schedule::Off
        }),
    };
    let method = match get("pgbackup.method") {
        None | Some("exec") => Method::Exec,
        Some("connect") => Method::Connect,
        Some(v) => {
            err("pgbackup.method", v, "exec or connect");
            Method::Exec
        }
    };
    let databases = match get("pgbackup.databases") {
        None | Some("*") | Some("") => Databases::All,
        Some(v) => {
            let names: Vec<String> = v.split(',').map(|s| s.trim().to_string()).collect();
            if let Some(why) = database_list_problem(&names) {
                // A connection string may carry a password: it is never echoed.
                let shown = if why.contains("connection string") {
                    "(a connection string, not shown)"
                } else {
                    v
                };
                err("pgbackup.databases", shown, &why);
            }
            Databases::List(names)
        }
    };
    let globals = match get("pgbackup.globals") {
        None => true,
        Some(v) => label_bool(v).unwrap_or_else(|| {
            err("pgbackup.globals", v, "true or false");
            true
        }),
    };
    let user = match get("pgbackup.user") {
        Some(v) => {
            if v.is_empty() || v.chars().any(char::is_control) {
                err("pgbackup.user", v, "a Postgres role name");
            }
            v.to_string()
        }
        None => env
            .get("POSTGRES_USER")
            .filter(|u| !u.is_empty())
            .cloned()
            .unwrap_or_else(|| "postgres".to_string()),
    };
    let format = match get("pgbackup.format") {
        None | Some("custom") => Format::Custom,
        Some("plain") => Format::Plain,
        Some(v) => {
            err("pgbackup.format", v, "custom or plain");
            Format::Custom
        }
    };
    let compression = match get("pgbackup.compression") {
        None => Compression::Zstd(3),
        Some(v) => Compression::parse(v).unwrap_or_else(|| {
            err("pgbackup.compression", v, Compression::EXPECTED);
            Compression::Zstd(3)
        }),
    };
    let dump_options = match get("pgbackup.dump_options") {
        None => vec![],
        Some(v) => validate_dump_options(v).unwrap_or_else(|why| {
            err("pgbackup.dump_options", v, &why);
            vec![]
        }),
    };
    let mut keep = KeepPolicy::default();
    for (class, slot) in [
        ("last", &mut keep.last),
        ("hourly", &mut keep.hourly),
        ("daily", &mut keep.daily),
        ("weekly", &mut keep.weekly),
        ("monthly", &mut keep.monthly),
        ("yearly", &mut keep.yearly),
    ] {
        let label = format!("pgbackup.keep.{class}");
        if let Some(v) = get(&label) {
            match v.parse::<u32>() {
                Ok(n) => *slot = Some(n),
                Err(_) => err(&label, v, "a whole number of backups to keep, 0 or more"),
            }
        }
    }
    let timeout = match get("pgbackup.timeout") {
        None => Duration::from_secs(2 * 3600),
        Some(v) => humantime::parse_duration(v)
            .ok()
            .filter(|d| *d >= Duration::from_secs(1))
            .unwrap_or_else(|| {
                err(
                    "pgbackup.timeout",
                    v,
                    "a duration of at least 1s such as 90s, 30m or 2h",
                );
                Duration::from_secs(2 * 3600)
            }),
    };
    let prefix = match get("pgbackup.prefix") {
        None => id.to_string(),
        Some(v) => {
            let p = v.trim_matches('/');
            if p.is_empty()
                || p.split('/').any(|s| {
                    s.is_empty() || s == "." || s == ".." || s.chars().any(char::is_control)
                })
            {
                err(
                    "pgbackup.prefix",
                    v,
                    "a key prefix such as prod/orders (no empty, . or .. segments)",
                );
            }
            p.to_string()
        }
    };

    if !errors.is_empty() {
        errors.sort_by(|a, b| a.label.cmp(&b.label));
        return Err(errors);
    }
    Ok(TargetSpec {
        schedule: schedule.to_string(),
        schedule_parsed: schedule,
        method,
        databases,
        globals,
        user,
        format,
        compression,
        dump_options,
        physical_schedule: physical_schedule.to_string(),
        physical_schedule_parsed: physical_schedule,
        keep: defaults.keep.merged(&keep),
        timeout,
        prefix,
    })
}

/// What is wrong with a `pgbackup.databases` list, if anything. Names are database names, never
/// connection strings: one with `=` or a `postgres://` form would make pg_dump read it as one
/// (another server, a password in the object key), so it is refused here, and every name reaches
/// pg_dump quoted (`backup::dbname_arg`).
fn database_list_problem(names: &[String]) -> Option<String> {
    let list = "a comma-separated list of database names, or * for all";
    for (i, n) in names.iter().enumerate() {
        if n.is_empty() {
            return Some(format!("{list}: an empty name"));
        }
        if n == "*" {
            return Some(
                "* means every database and cannot be listed with names: use * alone, or names only"
                    .into(),
            );
        }
        if n.len() > 63 || n.chars().any(char::is_control) {
            return Some(format!(
                "{list}: {n:?} is not a database name (at most 63 bytes, no control characters)"
            ));
        }
        if n.contains('=') || n.starts_with("postgres://") || n.starts_with("postgresql://") {
            return Some(
                "a connection string, not a database name: list database names of this container only (to back up a database whose name contains =, leave pgbackup.databases unset)".into(),
            );
        }
        if names[..i].contains(n) {
            return Some(format!("{list}: {n:?} is listed twice"));
        }
    }
    None
}

/// pg_dump options a user may add. Options we control (output, format, connection, compression,
/// parallel jobs) or that read files (`--filter`) are refused. `true` = takes a value.
const DUMP_OPTIONS: &[(&str, Option<char>, bool)] = &[
    ("--schema", Some('n'), true),
    ("--exclude-schema", Some('N'), true),
    ("--table", Some('t'), true),
    ("--exclude-table", Some('T'), true),
    ("--exclude-table-data", None, true),
    ("--table-and-children", None, true),
    ("--exclude-table-and-children", None, true),
    ("--exclude-table-data-and-children", None, true),
    ("--extension", Some('e'), true),
    ("--exclude-extension", None, true),
    ("--section", None, true),
    ("--encoding", Some('E'), true),
    ("--lock-wait-timeout", None, true),
    ("--rows-per-insert", None, true),
    ("--include-foreign-data", None, true),
    ("--snapshot", None, true),
    ("--data-only", Some('a'), false),
    ("--schema-only", Some('s'), false),
    ("--no-owner", Some('O'), false),
    ("--no-privileges", Some('x'), false),
    ("--no-acl", None, false),
    ("--no-comments", None, false),
    ("--no-publications", None, false),
    ("--no-subscriptions", None, false),
    ("--no-security-labels", None, false),
    ("--no-tablespaces", None, false),
    ("--no-toast-compression", None, false),
    ("--no-table-access-method", None, false),
    ("--no-unlogged-table-data", None, false),
    ("--no-large-objects", Some('B'), false),
    ("--no-blobs", None, false),
    ("--large-objects", Some('b'), false),
    ("--blobs", None, false),
    ("--clean", Some('c'), false),
    ("--if-exists", None, false),
    ("--inserts", None, false),
    ("--column-inserts", None, false),
    ("--attribute-inserts", None, false),
    ("--on-conflict-do-nothing", None, false),
    ("--disable-triggers", None, false),
    ("--disable-dollar-quoting", None, false),
    ("--enable-row-security", None, false),
    ("--quote-all-identifiers", None, false),
    ("--serializable-deferrable", None, false),
    ("--strict-names", None, false),
    ("--use-set-session-authorization", None, false),
    ("--load-via-partition-root", None, false),
    ("--no-sync", None, false),
    ("--verbose", Some('v'), false),
];

/// Splits with shell quoting rules (no shell is ever run) and accepts only known pg_dump options,
/// returning them normalised to `--long[=value]` form.
pub fn validate_dump_options(s: &str) -> Result<Vec<String>, String> {
    let words = shell_words::split(s).map_err(|e| format!("shell-style words ({e})"))?;
    let allowed = || {
        DUMP_OPTIONS
            .iter()
            .map(|(l, _, _)| *l)
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut out = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let (long, takes_value, inline) = if let Some(rest) = w.strip_prefix("--") {
            let (name, value) = match rest.split_once('=') {
                Some((n, v)) => (format!("--{n}"), Some(v.to_string())),
                None => (w.clone(), None),
            };
            match DUMP_OPTIONS.iter().find(|(l, _, _)| *l == name) {
                Some((l, _, tv)) => (*l, *tv, value),
                None => {
                    return Err(format!(
                        "pg_dump options from this list: {}; {name} is not allowed (connection, output and format are set by pgbackup)",
                        allowed()
                    ));
                }
            }
        } else if let Some(rest) = w.strip_prefix('-').filter(|r| !r.is_empty()) {
            let mut chars = rest.chars();
            let c = chars.next().expect("non-empty");
            let tail: String = chars.collect();
            match DUMP_OPTIONS.iter().find(|(_, s, _)| *s == Some(c)) {
                Some((l, _, true)) => (*l, true, (!tail.is_empty()).then_some(tail)),
                Some((l, _, false)) if tail.is_empty() => (*l, false, None),
                _ => {
                    return Err(format!(
                        "pg_dump options from this list: {}; -{c} is not allowed (connection, output and format are set by pgbackup)",
                        allowed()
                    ));
                }
            }
        } else {
            return Err(format!(
                "options only; {w:?} is not an option (the database list comes from pgbackup.databases)"
            ));
        };
        match (takes_value, inline) {
            (true, Some(v)) => out.push(format!("{long}={v}")),
            (true, None) => match it.next() {
                Some(v) => out.push(format!("{long}={v}")),
                None => return Err(format!("a value after {long}")),
            },
            (false, Some(_)) => return Err(format!("{long} without a value")),
            (false, None) => out.push(long.to_string()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn defaults() -> Defaults {
        Defaults::from_map(&HashMap::new()).unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        [(ENABLE, "true")]
            .iter()
            .chain(pairs)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn id() -> TargetId {
        TargetId {
            project: Some("shop".into()),
            service: "db".into(),
        }
    }

    #[test]
    fn typos_of_the_opt_in_label_are_noticed() {
        let l = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            near_misses(&l(&[("pgbackup.enabled", "true"), ("other", "x")])),
            ["pgbackup.enabled"]
        );
        assert_eq!(
            near_misses(&l(&[
                ("pgbackup.Enable", "true"),
                ("PGBACKUP.schedule", "@daily")
            ])),
            ["PGBACKUP.schedule", "pgbackup.Enable"]
        );
        assert!(
            near_misses(&l(&[
                ("pgbackup.enable", "false"),
                ("pgbackup.schedule", "@daily")
            ]))
            .is_empty()
        );
        assert!(near_misses(&l(&[("com.docker.compose.project", "shop")])).is_empty());
        assert!(near_misses(&l(&[("pgbackup-e2e.owner", "x")])).is_empty());
        assert_eq!(
            near_misses(&l(&[("pgbackup_enable", "true")])),
            ["pgbackup_enable"]
        );
        for v in ["yes", "1", "on", "enabled"] {
            assert!(
                matches!(enabled(&l(&[("pgbackup.enable", v)])), Some(Err(_))),
                "{v}"
            );
        }
        assert!(matches!(
            enabled(&l(&[("pgbackup.enable", "TRUE")])),
            Some(Ok(()))
        ));
    }

    #[test]
    fn defaults_apply() {
        let env: HashMap<String, String> =
            [("POSTGRES_USER".to_string(), "app".to_string())].into();
        let spec = parse(&id(), &labels(&[]), &env, &defaults()).unwrap();
        assert_eq!(spec.schedule, "@daily");
        assert_eq!(spec.method, Method::Exec);
        assert_eq!(spec.databases, Databases::All);
        assert!(spec.globals);
        assert_eq!(spec.user, "app");
        assert_eq!(spec.format, Format::Custom);
        assert_eq!(spec.compression, Compression::Zstd(3));
        assert_eq!(spec.physical_schedule, "off");
        assert_eq!(spec.timeout, Duration::from_secs(7200));
        assert_eq!(spec.prefix, "shop/db");
        let no_env = parse(&id(), &labels(&[]), &HashMap::new(), &defaults()).unwrap();
        assert_eq!(no_env.user, "postgres");
    }

    #[test]
    fn every_label_is_read() {
        let spec = parse(
            &id(),
            &labels(&[
                ("pgbackup.schedule", "*/10 * * * * *"),
                ("pgbackup.method", "connect"),
                ("pgbackup.databases", "app, audit"),
                ("pgbackup.globals", "false"),
                ("pgbackup.user", "backup"),
                ("pgbackup.format", "plain"),
                ("pgbackup.compression", "gzip:9"),
                (
                    "pgbackup.dump_options",
                    "--no-owner -n public --exclude-table='audit log'",
                ),
                ("pgbackup.physical.schedule", "@weekly"),
                ("pgbackup.keep.daily", "7"),
                ("pgbackup.keep.last", "0"),
                ("pgbackup.timeout", "30m"),
                ("pgbackup.prefix", "/prod/orders/"),
            ]),
            &HashMap::new(),
            &defaults(),
        )
        .unwrap();
        assert_eq!(spec.schedule, "*/10 * * * * *");
        assert_eq!(spec.method, Method::Connect);
        assert_eq!(
            spec.databases,
            Databases::List(vec!["app".into(), "audit".into()])
        );
        assert!(!spec.globals);
        assert_eq!(spec.user, "backup");
        assert_eq!(spec.format, Format::Plain);
        assert_eq!(spec.compression, Compression::Gzip(9));
        assert_eq!(
            spec.dump_options,
            vec!["--no-owner", "--schema=public", "--exclude-table=audit log"]
        );
        assert_eq!(spec.physical_schedule, "@weekly");
        assert_eq!(spec.keep.daily, Some(7));
        assert_eq!(spec.keep.last, Some(0));
        assert_eq!(spec.timeout, Duration::from_secs(1800));
        assert_eq!(spec.prefix, "prod/orders");
    }

    #[rstest]
    #[case("pgbackup.schedule", "not-a-cron")]
    #[case("pgbackup.schedule", "* * *")]
    #[case("pgbackup.physical.schedule", "@sometimes")]
    #[case("pgbackup.method", "ssh")]
    #[case("pgbackup.databases", "app,,audit")]
    #[case("pgbackup.databases", "app,app")]
    #[case("pgbackup.databases", "app,*")]
    #[case("pgbackup.globals", "perhaps")]
    #[case("pgbackup.user", "")]
    #[case("pgbackup.format", "directory")]
    #[case("pgbackup.compression", "zstd:25")]
    #[case("pgbackup.compression", "gzip:0")]
    #[case("pgbackup.compression", "lz4")]
    #[case("pgbackup.compression", "none:3")]
    #[case("pgbackup.dump_options", "--file=/tmp/x")]
    #[case("pgbackup.dump_options", "-h evil")]
    #[case("pgbackup.dump_options", "--schema")]
    #[case("pgbackup.dump_options", "mydb")]
    #[case("pgbackup.dump_options", "--no-owner; rm -rf /")]
    #[case("pgbackup.dump_options", "'unterminated")]
    #[case("pgbackup.dump_options", "-Fd")]
    #[case("pgbackup.keep.daily", "seven")]
    #[case("pgbackup.keep.weekly", "-1")]
    #[case("pgbackup.timeout", "forever")]
    #[case("pgbackup.timeout", "0s")]
    #[case("pgbackup.prefix", "a/../b")]
    #[case("pgbackup.enable", "yes please")]
    #[case("pgbackup.schedul", "@daily")]
    fn bad_labels_name_label_and_value(#[case] label: &str, #[case] value: &str) {
        let errs = parse(
            &id(),
            &labels(&[(label, value)]),
            &HashMap::new(),
            &defaults(),
        )
        .unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].label, label);
        assert_eq!(errs[0].value, value.trim());
        let msg = errs[0].to_string();
        assert!(msg.contains(label), "{msg}");
    }

    #[rstest]
    #[case("host=evil password=secret dbname=app")]
    #[case("app, postgresql://u:secret@evil/app")]
    fn connection_strings_are_refused_and_never_shown(#[case] value: &str) {
        let errs = parse(
            &id(),
            &labels(&[("pgbackup.databases", value)]),
            &HashMap::new(),
            &defaults(),
        )
        .unwrap_err();
        let msg = errs[0].to_string();
        assert!(msg.contains("connection string"), "{msg}");
        assert!(
            !msg.contains("secret") && !format!("{errs:?}").contains("secret"),
            "{msg}"
        );
    }

    #[test]
    fn any_valid_database_name_is_accepted() {
        let spec = parse(
            &id(),
            &labels(&[("pgbackup.databases", "a/b, Odd \"q\" name ,ünïcødé,globals")]),
            &HashMap::new(),
            &defaults(),
        )
        .unwrap();
        assert_eq!(
            spec.databases,
            Databases::List(vec![
                "a/b".into(),
                "Odd \"q\" name".into(),
                "ünïcødé".into(),
                "globals".into()
            ])
        );
    }

    #[test]
    fn all_errors_are_reported_together() {
        let errs = parse(
            &id(),
            &labels(&[("pgbackup.schedule", "bad"), ("pgbackup.method", "bad")]),
            &HashMap::new(),
            &defaults(),
        )
        .unwrap_err();
        let names: Vec<_> = errs.iter().map(|e| e.label.as_str()).collect();
        assert_eq!(names, ["pgbackup.method", "pgbackup.schedule"]);
    }

    #[rstest]
    #[case(&[("com.docker.compose.project", "shop"), ("com.docker.compose.service", "db")], "/shop-db-1", Some("shop/db"))]
    #[case(&[], "/standalone-pg", Some("standalone-pg"))]
    #[case(&[("com.docker.compose.project", "shop"), ("com.docker.compose.service", "db"), ("com.docker.compose.oneoff", "True")], "/shop-db-run-1", None)]
    fn target_identity(
        #[case] pairs: &[(&str, &str)],
        #[case] name: &str,
        #[case] expected: Option<&str>,
    ) {
        let l: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(
            TargetId::of(&l, name).map(|t| t.to_string()).as_deref(),
            expected
        );
    }

    #[rstest]
    #[case(&[], None)]
    #[case(&[(ENABLE, "false")], None)]
    #[case(&[(ENABLE, "true")], Some(true))]
    #[case(&[(ENABLE, "nope")], Some(false))]
    fn opt_in(#[case] pairs: &[(&str, &str)], #[case] expected: Option<bool>) {
        let l: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(enabled(&l).map(|r| r.is_ok()), expected);
    }

    #[test]
    fn env_defaults_feed_labels() {
        let d = Defaults::from_map(
            &[
                ("PGBACKUP_SCHEDULE".to_string(), "0 3 * * *".to_string()),
                ("RETENTION_KEEP_DAILY".to_string(), "7".to_string()),
                ("RETENTION_KEEP_WEEKLY".to_string(), "4".to_string()),
            ]
            .into(),
        )
        .unwrap();
        let spec = parse(
            &id(),
            &labels(&[("pgbackup.keep.daily", "14")]),
            &HashMap::new(),
            &d,
        )
        .unwrap();
        assert_eq!(spec.schedule, "0 3 * * *");
        assert_eq!(spec.keep.daily, Some(14));
        assert_eq!(spec.keep.weekly, Some(4));
    }
}
