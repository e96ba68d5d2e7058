//! Targets declared by variables instead of labels: databases that are not containers on this
//! host (a managed database, Postgres on another machine), reached by a connection URL.
//!
//! `PGBACKUP_TARGET_<NAME>_URL` (or `_URL_FILE`) declares target `<name>`; every other setting
//! a label offers is `PGBACKUP_TARGET_<NAME>_<SETTING>`, the label's name after `pgbackup.`
//! in capitals with `.` as `_` (`pgbackup.keep.daily` → `PGBACKUP_TARGET_BILLING_KEEP_DAILY`).
//! Pure: the settings become the labels [`crate::config::labels::parse`] reads, so both ways of
//! declaring a target share every rule.

use std::collections::{BTreeMap, HashMap};

use super::endpoint::Endpoint;
use super::labels::{self, LabelError};

pub const PREFIX: &str = "PGBACKUP_TARGET_";

/// Settings a target reached by URL cannot have, and why.
const NOT_FOR_URL: &[(&str, &str)] = &[
    (
        "pgbackup.method",
        "a target declared by URL is always dumped over the network (connect)",
    ),
    ("pgbackup.user", "the user is the URL's"),
    (
        "pgbackup.physical.schedule",
        "base backups restore into a Docker volume of this host; back a remote server up logically",
    ),
    (
        "pgbackup.drill.schedule",
        "restore drills start a server from the target's own image, which a URL does not name",
    ),
    (
        "pgbackup.hook.pre_backup",
        "hooks run inside the target's container",
    ),
    (
        "pgbackup.hook.post_backup",
        "hooks run inside the target's container",
    ),
    (
        "pgbackup.hook.timeout",
        "hooks run inside the target's container",
    ),
    ("pgbackup.sync.from", "copies go into containers"),
    ("pgbackup.sync.schedule", "copies go into containers"),
    ("pgbackup.sync.db", "copies go into containers"),
    ("pgbackup.sync.post_sql", "copies go into containers"),
    ("pgbackup.sync.allow_target", "copies go into containers"),
    ("pgbackup.enable", "the URL variable is what enables it"),
];

/// One declared target, not yet checked against the label rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declared {
    /// The target's name: `<NAME>` in lower case.
    pub name: String,
    /// The server, or why its URL cannot be read (the message never holds the URL).
    pub endpoint: Result<Endpoint, String>,
    /// `pgbackup.*` label → (variable, value), for [`labels::parse`].
    pub settings: BTreeMap<String, (String, String)>,
}

/// The variable of a setting: `pgbackup.keep.daily` of `billing` → `PGBACKUP_TARGET_BILLING_KEEP_DAILY`.
pub fn variable(name: &str, label: &str) -> String {
    format!(
        "{PREFIX}{}_{}",
        name.to_ascii_uppercase(),
        label
            .trim_start_matches(labels::PREFIX)
            .replace('.', "_")
            .to_ascii_uppercase()
    )
}

/// Every target the variables declare, sorted by name, and the `PGBACKUP_TARGET_*` variables
/// that belong to none (a typo), each with what was expected.
pub fn read(map: &HashMap<String, String>) -> (Vec<Declared>, Vec<String>) {
    let mut names: Vec<String> = map
        .keys()
        .filter_map(|k| k.strip_prefix(PREFIX)?.strip_suffix("_URL"))
        .filter(|n| !n.is_empty())
        .map(str::to_ascii_lowercase)
        .collect();
    names.sort();
    names.dedup();
    // The longest name first, so `A_B` wins over `A` for `PGBACKUP_TARGET_A_B_SCHEDULE`.
    let mut by_length = names.clone();
    by_length.sort_by_key(|n| std::cmp::Reverse(n.len()));
    let mut out: BTreeMap<String, Declared> = names
        .iter()
        .map(|n| {
            let url = &map[&format!("{PREFIX}{}_URL", n.to_ascii_uppercase())];
            (
                n.clone(),
                Declared {
                    name: n.clone(),
                    endpoint: Endpoint::parse(url),
                    settings: BTreeMap::new(),
                },
            )
        })
        .collect();
    let mut stray = Vec::new();
    let mut keys: Vec<&String> = map.keys().filter(|k| k.starts_with(PREFIX)).collect();
    keys.sort();
    for key in keys {
        let rest = &key[PREFIX.len()..];
        if rest.ends_with("_URL") || rest.ends_with("_URL_FILE") {
            continue;
        }
        let found = by_length.iter().find_map(|n| {
            let setting = rest
                .strip_prefix(&n.to_ascii_uppercase())?
                .strip_prefix('_')?;
            let label = labels::KNOWN.iter().find(|l| {
                l.trim_start_matches(labels::PREFIX)
                    .replace('.', "_")
                    .eq_ignore_ascii_case(setting)
            })?;
            Some((n.clone(), label.to_string()))
        });
        match found {
            Some((n, label)) => {
                out.get_mut(&n)
                    .expect("a known name")
                    .settings
                    .insert(label, (key.clone(), map[key].clone()));
            }
            None => stray.push(key.clone()),
        }
    }
    (out.into_values().collect(), stray)
}

impl Declared {
    /// The labels this declaration stands for, and the errors of settings a URL target cannot
    /// have (named by their variables).
    pub fn labels(&self) -> (HashMap<String, String>, Vec<LabelError>) {
        let mut labels: HashMap<String, String> = HashMap::new();
        let mut errors = Vec::new();
        labels.insert("pgbackup.enable".into(), "true".into());
        labels.insert("pgbackup.method".into(), "connect".into());
        // Not PGBACKUP_DRILL_SCHEDULE's: a drill needs the target's image (see NOT_FOR_URL).
        labels.insert("pgbackup.drill.schedule".into(), "off".into());
        for (label, (var, value)) in &self.settings {
            if let Some((_, why)) = NOT_FOR_URL.iter().find(|(l, _)| l == label) {
                errors.push(LabelError {
                    label: var.clone(),
                    value: value.clone(),
                    expected: format!("nothing: {why}"),
                });
                continue;
            }
            labels.insert(label.clone(), value.clone());
        }
        match &self.endpoint {
            Ok(e) => {
                labels.insert("pgbackup.user".into(), e.user.clone());
                if !e.databases.is_empty() {
                    if let Some((var, _)) = self.settings.get("pgbackup.databases") {
                        errors.push(LabelError {
                            label: var.clone(),
                            value: labels["pgbackup.databases"].clone(),
                            expected: format!(
                                "nothing: the URL names the databases ({}); name them in one place",
                                e.databases.join(",")
                            ),
                        });
                    }
                    labels.insert("pgbackup.databases".into(), e.databases.join(","));
                }
            }
            Err(why) => errors.push(LabelError {
                label: self.url_variable(),
                value: "(not shown: it may hold a password)".into(),
                expected: format!("{} ({why})", super::endpoint::EXPECTED),
            }),
        }
        (labels, errors)
    }

    pub fn url_variable(&self) -> String {
        format!("{PREFIX}{}_URL", self.name.to_ascii_uppercase())
    }

    /// A label error renamed to the variable that set it.
    pub fn rename(&self, mut e: LabelError) -> LabelError {
        if let Some((var, _)) = self.settings.get(&e.label) {
            e.label = var.clone();
        } else if e.label == "pgbackup.databases" || e.label == "pgbackup.user" {
            e.label = self.url_variable();
        }
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn names_settings_and_strays_are_told_apart() {
        let (d, stray) = read(&map(&[
            ("PGBACKUP_TARGET_BILLING_URL", "postgres://u:pw@db/app"),
            ("PGBACKUP_TARGET_BILLING_SCHEDULE", "@hourly"),
            ("PGBACKUP_TARGET_BILLING_KEEP_DAILY", "7"),
            ("PGBACKUP_TARGET_BILLING_DB_URL", "postgres://u@db2/"),
            ("PGBACKUP_TARGET_BILLING_DB_SKIP_IF_NEWER_THAN", "20h"),
            ("PGBACKUP_TARGET_BILLING_SCHEDUL", "@daily"),
            ("PGBACKUP_TARGET_OTHER_SCHEDULE", "@daily"),
            ("PGBACKUP_SCHEDULE", "@daily"),
        ]));
        assert_eq!(
            d.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(),
            ["billing", "billing_db"]
        );
        assert_eq!(
            d[0].settings.keys().collect::<Vec<_>>(),
            ["pgbackup.keep.daily", "pgbackup.schedule"]
        );
        assert_eq!(
            d[1].settings["pgbackup.skip_if_newer_than"],
            (
                "PGBACKUP_TARGET_BILLING_DB_SKIP_IF_NEWER_THAN".to_string(),
                "20h".to_string()
            )
        );
        assert_eq!(
            stray,
            [
                "PGBACKUP_TARGET_BILLING_SCHEDUL",
                "PGBACKUP_TARGET_OTHER_SCHEDULE"
            ]
        );
        assert_eq!(
            variable("billing_db", "pgbackup.keep.daily"),
            "PGBACKUP_TARGET_BILLING_DB_KEEP_DAILY"
        );
    }

    #[test]
    fn labels_come_from_the_url_and_container_only_settings_are_refused() {
        let (d, _) = read(&map(&[
            (
                "PGBACKUP_TARGET_B_URL",
                "postgres://backup:pw@db/app,billing?sslmode=require",
            ),
            ("PGBACKUP_TARGET_B_HOOK_PRE_BACKUP", "true"),
            ("PGBACKUP_TARGET_B_DATABASES", "app"),
            ("PGBACKUP_TARGET_B_FORMAT", "plain"),
        ]));
        let (labels, errors) = d[0].labels();
        assert_eq!(labels["pgbackup.user"], "backup");
        assert_eq!(labels["pgbackup.method"], "connect");
        assert_eq!(labels["pgbackup.databases"], "app,billing");
        assert_eq!(labels["pgbackup.format"], "plain");
        assert_eq!(labels["pgbackup.drill.schedule"], "off");
        let named: Vec<&str> = errors.iter().map(|e| e.label.as_str()).collect();
        assert_eq!(
            named,
            [
                "PGBACKUP_TARGET_B_HOOK_PRE_BACKUP",
                "PGBACKUP_TARGET_B_DATABASES"
            ],
            "{errors:?}"
        );
        let (bad, _) = read(&map(&[("PGBACKUP_TARGET_X_URL", "mysql://u:secret@h/")]));
        let (_, errors) = bad[0].labels();
        assert_eq!(errors[0].label, "PGBACKUP_TARGET_X_URL");
        assert!(!errors[0].to_string().contains("secret"), "{errors:?}");
    }
}
