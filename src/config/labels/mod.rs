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
use crate::model::Schedule;
use crate::model::encryption::Recipients;
use crate::model::{Compression, Databases, Format, Method, TargetId};
use crate::notify::ping::{self, PingUrl};

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
    "pgbackup.restore_options",
    "pgbackup.age_recipients",
    "pgbackup.physical.schedule",
    "pgbackup.drill.schedule",
    "pgbackup.sync.from",
    "pgbackup.sync.schedule",
    "pgbackup.sync.db",
    "pgbackup.sync.post_sql",
    "pgbackup.sync.allow_target",
    "pgbackup.keep.last",
    "pgbackup.keep.hourly",
    "pgbackup.keep.daily",
    "pgbackup.keep.weekly",
    "pgbackup.keep.monthly",
    "pgbackup.keep.yearly",
    "pgbackup.timeout",
    "pgbackup.skip_if_newer_than",
    "pgbackup.prefix",
    "pgbackup.ping_url",
    "pgbackup.hook.pre_backup",
    "pgbackup.hook.post_backup",
    "pgbackup.hook.timeout",
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
    /// pg_restore options every logical restore into this target gets.
    pub restore_options: Vec<String>,
    pub physical_schedule: String,
    #[serde(skip)]
    pub physical_schedule_parsed: Schedule,
    /// Restore drills of the latest logical backup (`pgbackup.drill.schedule`).
    pub drill_schedule: String,
    #[serde(skip)]
    pub drill_schedule_parsed: Schedule,
    pub keep: KeepPolicy,
    #[serde(with = "humantime_serde_compat")]
    pub timeout: Duration,
    pub prefix: String,
    /// Shown as its host only (the path is the check's secret).
    pub ping_url: Option<PingUrl>,
    pub hooks: Hooks,
    /// Every object is encrypted to these (`pgbackup.age_recipients`, else
    /// `PGBACKUP_AGE_RECIPIENTS`; `none` turns it off for this target).
    pub age_recipients: Option<Recipients>,
    /// A start-up, `--all` or single-shot run is skipped while a committed backup of its kind
    /// is younger than this (`pgbackup.skip_if_newer_than`, else `PGBACKUP_SKIP_IF_NEWER_THAN`;
    /// `off` turns it off for this target). Scheduled and named backups always run.
    #[serde(with = "humantime_serde_compat::option")]
    pub skip_if_newer_than: Option<Duration>,
}

/// Commands run inside the target's container around each backup (`pgbackup.hook.*`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hooks {
    pub pre_backup: Option<Vec<String>>,
    pub post_backup: Option<Vec<String>>,
    #[serde(with = "humantime_serde_compat")]
    pub timeout: Duration,
}

/// `pgbackup.hook.timeout` when unset.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(300);

impl Default for Hooks {
    fn default() -> Hooks {
        Hooks {
            pre_backup: None,
            post_backup: None,
            timeout: HOOK_TIMEOUT,
        }
    }
}

mod humantime_serde_compat {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub mod option {
        pub fn serialize<S: serde::Serializer>(
            d: &Option<std::time::Duration>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => super::serialize(d, s),
                None => s.serialize_none(),
            }
        }
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
        // A target declared by variables names the variable that set the value.
        let what = if self.label.starts_with(PREFIX) {
            "label"
        } else {
            "variable"
        };
        write!(
            f,
            "{what} {}={:?} is not valid: expected {}",
            self.label, self.value, self.expected
        )
    }
}

/// Whether a container opted in: `None` = no `pgbackup.enable` label or `false` (not a target);
/// `Some(Err)` = the value is not a boolean (listed as an invalid target so the typo is seen).
/// On a container that is not opted in: the labels that look like ours (`pgbackup.enabled`,
/// `pgbackup.Enable`, `PGBACKUP.schedule`…), a sign of a typo that keeps it from being backed up.
pub fn near_misses(labels: &HashMap<String, String>) -> Vec<String> {
    if labels.contains_key(ENABLE) || labels.contains_key(SYNC_FROM) {
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

/// The label that makes a container the destination of scheduled copies.
pub const SYNC_FROM: &str = "pgbackup.sync.from";

/// A scheduled copy into this container (`pgbackup.sync.*`, README "Scheduled copies"): the
/// latest committed logical backup of `from` restored into it on `schedule`, all or nothing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SyncSpec {
    /// The source target, `project/service` (or a container name outside compose).
    pub from: String,
    pub schedule: String,
    #[serde(skip)]
    pub schedule_parsed: Schedule,
    /// Only this database of the backup (`--db`).
    pub db: Option<String>,
    /// `*.sql` files run after the restore (`--post-sql`), a directory in the sidecar.
    pub post_sql: Option<std::path::PathBuf>,
    /// Whether the destination may be a labelled backup target itself.
    pub allow_target: bool,
}

/// The copy settings of a container carrying [`SYNC_FROM`]; `None` without it. Errors name the
/// label and what it expects.
pub fn parse_sync(labels: &HashMap<String, String>) -> Option<Result<SyncSpec, Vec<LabelError>>> {
    labels.get(SYNC_FROM)?;
    let mut r = Reader::new(labels);
    let from = r.get(SYNC_FROM).unwrap_or("").to_string();
    if from.is_empty() || from.chars().any(char::is_whitespace) {
        r.err(
            SYNC_FROM,
            &from,
            "the source target as project/service (see pgctl status), e.g. shop/db",
        );
    }
    let schedule = r.schedule("pgbackup.sync.schedule").unwrap_or_else(|| {
        r.err(
            "pgbackup.sync.schedule",
            "",
            &format!("a schedule for the copies: {}", Schedule::EXPECTED),
        );
        Schedule::Off
    });
    let db = r.get("pgbackup.sync.db").map(String::from);
    if let Some(d) = &db
        && let Some(why) = database_list_problem(std::slice::from_ref(d))
    {
        r.err("pgbackup.sync.db", d, &why);
    }
    let post_sql = r
        .get("pgbackup.sync.post_sql")
        .map(std::path::PathBuf::from);
    if let Some(p) = &post_sql
        && !p.is_absolute()
    {
        r.err(
            "pgbackup.sync.post_sql",
            &p.display().to_string(),
            "an absolute path of a directory of *.sql files, as the sidecar sees it",
        );
    }
    let allow_target = r.boolean("pgbackup.sync.allow_target", false);
    if !r.errors.is_empty() {
        return Some(Err(r.errors));
    }
    Some(Ok(SyncSpec {
        from,
        schedule: schedule.to_string(),
        schedule_parsed: schedule,
        db,
        post_sql,
        allow_target,
    }))
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
    let mut r = Reader::new(labels);
    r.unknown();
    if let Some(Err(e)) = enabled(labels) {
        r.errors.push(e);
    }
    let schedule = r
        .schedule("pgbackup.schedule")
        .unwrap_or_else(|| defaults.schedule.clone());
    let physical_schedule = r
        .schedule("pgbackup.physical.schedule")
        .unwrap_or(Schedule::Off);
    let drill_schedule = r
        .schedule("pgbackup.drill.schedule")
        .unwrap_or_else(|| defaults.drill_schedule.clone());
    let method = r.choice(
        "pgbackup.method",
        &[("exec", Method::Exec), ("connect", Method::Connect)],
        "exec or connect",
    );
    let databases = r.databases();
    let globals = r.boolean("pgbackup.globals", true);
    let user = r.user(env);
    let format = r.choice(
        "pgbackup.format",
        &[("custom", Format::Custom), ("plain", Format::Plain)],
        "custom or plain",
    );
    let compression = r
        .parsed("pgbackup.compression", Compression::EXPECTED, |v| {
            Compression::parse(v).ok_or(())
        })
        .unwrap_or(Compression::Zstd(3));
    let dump_options = r.dump_options();
    let restore_options = r.restore_options();
    let keep = r.keep();
    let timeout = r
        .duration("pgbackup.timeout", "90s, 30m or 2h")
        .unwrap_or(Duration::from_secs(2 * 3600));
    let prefix = r.prefix(id);
    let ping_url = r.ping_url();
    let hooks = r.hooks();
    let age_recipients = r.age_recipients(defaults);
    let skip_if_newer_than = r.skip_if_newer_than(defaults);

    let mut errors = r.errors;
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
        restore_options,
        physical_schedule: physical_schedule.to_string(),
        physical_schedule_parsed: physical_schedule,
        drill_schedule: drill_schedule.to_string(),
        drill_schedule_parsed: drill_schedule,
        keep: defaults.keep.merged(&keep),
        timeout,
        prefix,
        ping_url,
        hooks,
        age_recipients,
        skip_if_newer_than,
    })
}

/// Reads a container's `pgbackup.*` labels one by one, collecting every problem so the user
/// fixes them in one go; each reader falls back to the default when its label is bad.
struct Reader<'a> {
    ours: BTreeMap<&'a str, &'a str>,
    errors: Vec<LabelError>,
}

impl<'a> Reader<'a> {
    fn new(labels: &'a HashMap<String, String>) -> Reader<'a> {
        Reader {
            ours: labels
                .iter()
                .filter(|(k, _)| k.starts_with(PREFIX))
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
            errors: Vec::new(),
        }
    }

    fn get(&self, label: &str) -> Option<&'a str> {
        self.ours.get(label).map(|v| v.trim())
    }

    fn err(&mut self, label: &str, value: &str, expected: &str) {
        self.errors.push(LabelError {
            label: label.into(),
            value: value.into(),
            expected: expected.into(),
        });
    }

    /// Labels under `pgbackup.` that we do not know: typos.
    fn unknown(&mut self) {
        let unknown: Vec<(String, String)> = self
            .ours
            .iter()
            .filter(|(k, _)| !KNOWN.contains(k))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        for (k, v) in unknown {
            self.err(
                &k,
                &v,
                &format!("one of the known labels ({})", KNOWN.join(", ")),
            );
        }
    }

    /// `label` through `parse`; `None` when unset or bad (and then an error naming `expected`).
    fn parsed<T>(
        &mut self,
        label: &str,
        expected: &str,
        parse: impl FnOnce(&str) -> Result<T, ()>,
    ) -> Option<T> {
        let v = self.get(label)?;
        match parse(v) {
            Ok(t) => Some(t),
            Err(()) => {
                self.err(label, v, expected);
                None
            }
        }
    }

    /// A duration of at least a second; `examples` such as "30s or 5m".
    fn duration(&mut self, label: &str, examples: &str) -> Option<Duration> {
        self.parsed(
            label,
            &format!("a duration of at least 1s such as {examples}"),
            |v| {
                humantime::parse_duration(v)
                    .ok()
                    .filter(|d| *d >= Duration::from_secs(1))
                    .ok_or(())
            },
        )
    }

    fn schedule(&mut self, label: &str) -> Option<Schedule> {
        let v = self.get(label)?;
        Some(Schedule::parse(v).unwrap_or_else(|e| {
            self.err(label, v, &format!("{} ({e})", Schedule::EXPECTED));
            Schedule::Off
        }))
    }

    /// One of `options` by name; the first is the default.
    fn choice<T: Copy>(&mut self, label: &str, options: &[(&str, T)], expected: &str) -> T {
        self.parsed(label, expected, |v| {
            options
                .iter()
                .find(|(name, _)| *name == v)
                .map(|(_, t)| *t)
                .ok_or(())
        })
        .unwrap_or(options[0].1)
    }

    fn boolean(&mut self, label: &str, default: bool) -> bool {
        self.parsed(label, "true or false", |v| label_bool(v).ok_or(()))
            .unwrap_or(default)
    }

    fn databases(&mut self) -> Databases {
        match self.get("pgbackup.databases") {
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
                    self.err("pgbackup.databases", shown, &why);
                }
                Databases::List(names)
            }
        }
    }

    fn user(&mut self, env: &HashMap<String, String>) -> String {
        match self.get("pgbackup.user") {
            Some(v) => {
                if v.is_empty() || v.chars().any(char::is_control) {
                    self.err("pgbackup.user", v, "a Postgres role name");
                }
                v.to_string()
            }
            None => env
                .get("POSTGRES_USER")
                .filter(|u| !u.is_empty())
                .cloned()
                .unwrap_or_else(|| "postgres".to_string()),
        }
    }

    fn dump_options(&mut self) -> Vec<String> {
        let Some(v) = self.get("pgbackup.dump_options") else {
            return vec![];
        };
        validate_dump_options(v).unwrap_or_else(|why| {
            self.err("pgbackup.dump_options", v, &why);
            vec![]
        })
    }

    /// `pgbackup.age_recipients`: a list, or `none`; unset means `PGBACKUP_AGE_RECIPIENTS`.
    fn age_recipients(&mut self, defaults: &Defaults) -> Option<Recipients> {
        const LABEL: &str = "pgbackup.age_recipients";
        let Some(v) = self.get(LABEL) else {
            return defaults.age_recipients.clone();
        };
        if v.eq_ignore_ascii_case("none") {
            return None;
        }
        match Recipients::parse(v) {
            Ok(r) => Some(r),
            Err(why) => {
                // A private key pasted here must not be shown again in status and logs.
                let shown = if v.contains("AGE-SECRET-KEY") || v.contains("PRIVATE KEY") {
                    "(hidden: it holds a private key)"
                } else {
                    v
                };
                self.err(
                    LABEL,
                    shown,
                    &format!("{} or none ({why})", Recipients::EXPECTED),
                );
                // Never fall back to writing unencrypted backups of a target meant to be
                // encrypted: the target is invalid until the label is fixed.
                None
            }
        }
    }

    /// `pgbackup.skip_if_newer_than`: a duration, or `off`; unset means
    /// `PGBACKUP_SKIP_IF_NEWER_THAN`.
    fn skip_if_newer_than(&mut self, defaults: &Defaults) -> Option<Duration> {
        const LABEL: &str = "pgbackup.skip_if_newer_than";
        match self.get(LABEL) {
            None => defaults.skip_if_newer_than,
            Some(v) if v.eq_ignore_ascii_case("off") => None,
            Some(_) => self.duration(LABEL, "20h or 30m, or off"),
        }
    }

    fn restore_options(&mut self) -> Vec<String> {
        let Some(v) = self.get(RESTORE_OPTIONS_LABEL) else {
            return vec![];
        };
        validate_restore_options(v).unwrap_or_else(|why| {
            self.err(RESTORE_OPTIONS_LABEL, v, &why);
            vec![]
        })
    }

    fn keep(&mut self) -> KeepPolicy {
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
            *slot = self.parsed(
                &label,
                "a whole number of backups to keep, 0 or more",
                |v| v.parse::<u32>().map_err(|_| ()),
            );
        }
        keep
    }

    fn ping_url(&mut self) -> Option<PingUrl> {
        let v = self.get("pgbackup.ping_url")?;
        match PingUrl::parse(v) {
            Ok(u) => Some(u),
            Err(_) => {
                // The URL is the check's secret: never echoed.
                self.err("pgbackup.ping_url", "(not shown)", ping::EXPECTED);
                None
            }
        }
    }

    fn hooks(&mut self) -> Hooks {
        let mut command = |label: &str| {
            let v = self.get(label)?;
            match shell_words::split(v) {
                Ok(words) if !words.is_empty() => Some(words),
                Ok(_) => {
                    self.err(
                        label,
                        v,
                        "a command such as pg_isready or sh -c 'curl -fsS http://app/pause'",
                    );
                    None
                }
                Err(e) => {
                    self.err(
                        label,
                        v,
                        &format!("a command with shell-style quoting ({e})"),
                    );
                    None
                }
            }
        };
        let pre_backup = command("pgbackup.hook.pre_backup");
        let post_backup = command("pgbackup.hook.post_backup");
        let timeout = self
            .duration("pgbackup.hook.timeout", "30s or 5m")
            .unwrap_or(HOOK_TIMEOUT);
        Hooks {
            pre_backup,
            post_backup,
            timeout,
        }
    }

    fn prefix(&mut self, id: &TargetId) -> String {
        let Some(v) = self.get("pgbackup.prefix") else {
            return id.to_string();
        };
        let p = v.trim_matches('/');
        if p.is_empty()
            || p.split('/')
                .any(|s| s.is_empty() || s == "." || s == ".." || s.chars().any(char::is_control))
        {
            self.err(
                "pgbackup.prefix",
                v,
                "a key prefix such as prod/orders (no empty, . or .. segments)",
            );
        }
        p.to_string()
    }
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

pub const RESTORE_OPTIONS_LABEL: &str = "pgbackup.restore_options";

/// pg_restore options a logical restore may pass on. Only those that keep the archive's
/// `CREATE DATABASE` (the restore loads into a new database and renames it): not `--schema`,
/// `--table` or `--section`, which leave it out; not `--clean` or `--single-transaction`, which
/// the restore's own method replaces.
const RESTORE_OPTIONS: &[(&str, Option<char>, bool)] = &[
    ("--no-owner", Some('O'), false),
    ("--no-privileges", Some('x'), false),
    ("--no-acl", None, false),
    ("--no-comments", None, false),
    ("--no-publications", None, false),
    ("--no-subscriptions", None, false),
    ("--no-security-labels", None, false),
    ("--no-tablespaces", None, false),
    ("--no-table-access-method", None, false),
    ("--exclude-schema", Some('N'), true),
    ("--use-set-session-authorization", None, false),
];

/// [`RESTORE_OPTIONS`] from `--restore-option` or `pgbackup.restore_options`, normalised to
/// `--long[=value]`.
pub fn validate_restore_options(s: &str) -> Result<Vec<String>, String> {
    validate_options(
        s,
        RESTORE_OPTIONS,
        "pg_restore",
        "(the restore creates, loads and renames the databases itself)",
    )
}

/// Splits with shell quoting rules (no shell is ever run) and accepts only known pg_dump options,
/// returning them normalised to `--long[=value]` form.
pub fn validate_dump_options(s: &str) -> Result<Vec<String>, String> {
    validate_options(
        s,
        DUMP_OPTIONS,
        "pg_dump",
        "(connection, output and format are set by pgbackup)",
    )
}

/// Options of `tool` from `table` (long name, short letter, takes a value), in `--long[=value]`
/// form; `why_not` says why others are refused.
fn validate_options(
    s: &str,
    table: &[(&str, Option<char>, bool)],
    tool: &str,
    why_not: &str,
) -> Result<Vec<String>, String> {
    let words = shell_words::split(s).map_err(|e| format!("shell-style words ({e})"))?;
    let allowed = || {
        table
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
            match table.iter().find(|(l, _, _)| *l == name) {
                Some((l, _, tv)) => (*l, *tv, value),
                None => {
                    return Err(format!(
                        "{tool} options from this list: {}; {name} is not allowed {why_not}",
                        allowed()
                    ));
                }
            }
        } else if let Some(rest) = w.strip_prefix('-').filter(|r| !r.is_empty()) {
            let mut chars = rest.chars();
            let c = chars.next().expect("non-empty");
            let tail: String = chars.collect();
            match table.iter().find(|(_, s, _)| *s == Some(c)) {
                Some((l, _, true)) => (*l, true, (!tail.is_empty()).then_some(tail)),
                Some((l, _, false)) if tail.is_empty() => (*l, false, None),
                _ => {
                    return Err(format!(
                        "{tool} options from this list: {}; -{c} is not allowed {why_not}",
                        allowed()
                    ));
                }
            }
        } else {
            return Err(format!(
                "options only; {w:?} is not an option (databases are chosen by pgbackup.databases, or --db for a restore)"
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
mod tests;
