//! Which containers a sidecar acts on (`PGBACKUP_SCOPE`). Pure.
//!
//! By default a sidecar serves its own compose project only: several stacks on one host each run
//! their own sidecar, and none of them lists, backs up, prunes or restores into another's
//! containers. `PGBACKUP_SCOPE` widens that to named projects, to containers started outside
//! Compose (`standalone`), or to every container of the host (`host`).

use std::collections::{BTreeSet, HashMap};
use std::fmt;

/// The label Compose puts on every container of a project.
use crate::model::target::COMPOSE_PROJECT;

/// `PGBACKUP_SCOPE` as written.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Setting {
    /// Unset: the sidecar's own compose project (the whole host when it is not in one).
    #[default]
    Own,
    Explicit(Scope),
}

/// The containers a sidecar acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Host,
    Projects {
        projects: BTreeSet<String>,
        /// Containers that belong to no compose project.
        standalone: bool,
    },
}

pub const EXPECTED: &str = "host, or a comma-separated list of compose project names (lower-case letters, digits, - and _) and/or standalone";

impl Setting {
    pub fn parse(value: &str) -> Result<Setting, String> {
        let words: Vec<&str> = value
            .split(',')
            .map(str::trim)
            .filter(|w| !w.is_empty())
            .collect();
        if words.is_empty() {
            return Ok(Setting::Own);
        }
        if words.contains(&"host") {
            if words.len() > 1 {
                return Err("host already means every container; list nothing else".into());
            }
            return Ok(Setting::Explicit(Scope::Host));
        }
        let mut projects = BTreeSet::new();
        let mut standalone = false;
        for w in words {
            if w == "standalone" {
                standalone = true;
            } else if is_project_name(w) {
                projects.insert(w.to_string());
            } else {
                return Err(format!("{w:?} is not a compose project name"));
            }
        }
        Ok(Setting::Explicit(Scope::Projects {
            projects,
            standalone,
        }))
    }

    /// The scope in force, given the compose project the sidecar runs in (if any).
    pub fn resolve(&self, own_project: Option<&str>) -> Scope {
        match (self, own_project) {
            (Setting::Explicit(s), _) => s.clone(),
            (Setting::Own, Some(p)) => Scope::Projects {
                projects: BTreeSet::from([p.to_string()]),
                standalone: false,
            },
            // pgctl on the host, or a sidecar started with `docker run`: no project to keep to.
            (Setting::Own, None) => Scope::Host,
        }
    }
}

/// Compose's own rule for project names.
fn is_project_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

impl Scope {
    /// Whether a container with these labels is in scope.
    pub fn admits(&self, labels: &HashMap<String, String>) -> bool {
        match self {
            Scope::Host => true,
            Scope::Projects {
                projects,
                standalone,
            } => match labels.get(COMPOSE_PROJECT) {
                Some(p) => projects.contains(p),
                None => *standalone,
            },
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Host => f.write_str("host"),
            Scope::Projects {
                projects,
                standalone,
            } => {
                let mut words: Vec<&str> = projects.iter().map(String::as_str).collect();
                if *standalone {
                    words.push("standalone");
                }
                if words.is_empty() {
                    f.write_str("(nothing)")
                } else {
                    f.write_str(&words.join(","))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn labels(project: Option<&str>) -> HashMap<String, String> {
        project
            .map(|p| HashMap::from([(COMPOSE_PROJECT.to_string(), p.to_string())]))
            .unwrap_or_default()
    }

    #[rstest]
    // Default: own project only; not in compose: everything.
    #[case("", Some("shop"), Some("shop"), true)]
    #[case("", Some("shop"), Some("blog"), false)]
    #[case("", Some("shop"), None, false)]
    #[case("", None, Some("blog"), true)]
    #[case("host", Some("shop"), Some("blog"), true)]
    #[case("host", Some("shop"), None, true)]
    #[case("shop,blog", Some("x"), Some("blog"), true)]
    #[case("shop, blog", Some("x"), Some("x"), false)]
    #[case("shop,standalone", Some("shop"), None, true)]
    #[case("shop", Some("shop"), None, false)]
    fn admits(
        #[case] setting: &str,
        #[case] own: Option<&str>,
        #[case] container: Option<&str>,
        #[case] expected: bool,
    ) {
        let scope = Setting::parse(setting).unwrap().resolve(own);
        assert_eq!(scope.admits(&labels(container)), expected, "{scope}");
    }

    #[rstest]
    #[case("host,shop")]
    #[case("Shop")]
    #[case("shop/db")]
    #[case("-shop")]
    #[case("*")]
    fn refuses(#[case] value: &str) {
        assert!(Setting::parse(value).is_err(), "{value}");
    }

    #[test]
    fn displays_as_written() {
        let s = Setting::parse("blog,standalone,shop")
            .unwrap()
            .resolve(None);
        assert_eq!(s.to_string(), "blog,shop,standalone");
        assert_eq!(Setting::Own.resolve(None).to_string(), "host");
    }
}
