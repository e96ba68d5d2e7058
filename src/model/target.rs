//! What a target is and how it is backed up: the names every stage shares. Pure.

use std::collections::HashMap;
use std::fmt;

use serde::Serialize;

/// The Compose labels Docker puts on a service's containers.
pub const COMPOSE_PROJECT: &str = "com.docker.compose.project";
const COMPOSE_SERVICE: &str = "com.docker.compose.service";
const COMPOSE_ONEOFF: &str = "com.docker.compose.oneoff";

/// `<compose project>/<compose service>`, or the container name outside Compose. It survives
/// container re-creation, so schedules and backups follow the service, not the container.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(into = "String")]
pub struct TargetId {
    pub project: Option<String>,
    pub service: String,
}

impl fmt::Display for TargetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.project {
            Some(p) => write!(f, "{p}/{}", self.service),
            None => f.write_str(&self.service),
        }
    }
}

impl From<TargetId> for String {
    fn from(t: TargetId) -> String {
        t.to_string()
    }
}

impl TargetId {
    /// `None` for containers that are not backup targets by nature: `compose run` one-offs.
    pub fn of(labels: &HashMap<String, String>, container_name: &str) -> Option<TargetId> {
        if labels
            .get(COMPOSE_ONEOFF)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
        {
            return None;
        }
        match (labels.get(COMPOSE_PROJECT), labels.get(COMPOSE_SERVICE)) {
            (Some(p), Some(s)) if !p.is_empty() && !s.is_empty() => Some(TargetId {
                project: Some(p.clone()),
                service: s.clone(),
            }),
            _ => Some(TargetId {
                project: None,
                service: container_name.trim_start_matches('/').to_string(),
            }),
        }
    }

    /// True when `s` names this target: `project/service`, or just `service` when unambiguous
    /// is decided by the caller.
    pub fn matches(&self, s: &str) -> bool {
        self.to_string() == s || self.service == s
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Exec,
    Connect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Custom,
    Plain,
    /// Physical base backups (never a label value).
    Tar,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "codec", content = "level", rename_all = "lowercase")]
pub enum Compression {
    Zstd(i32),
    Gzip(u32),
    None,
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Compression::Zstd(l) => write!(f, "zstd:{l}"),
            Compression::Gzip(l) => write!(f, "gzip:{l}"),
            Compression::None => f.write_str("none"),
        }
    }
}

impl Compression {
    pub const EXPECTED: &'static str = "zstd, zstd:1 … zstd:19, gzip, gzip:1 … gzip:9, or none";

    pub fn parse(s: &str) -> Option<Compression> {
        let (codec, level) = match s.trim().split_once(':') {
            Some((c, l)) => (c, Some(l)),
            None => (s.trim(), None),
        };
        match codec.to_ascii_lowercase().as_str() {
            "zstd" => match level {
                None => Some(Compression::Zstd(3)),
                Some(l) => l
                    .parse::<i32>()
                    .ok()
                    .filter(|l| (1..=19).contains(l))
                    .map(Compression::Zstd),
            },
            "gzip" => match level {
                None => Some(Compression::Gzip(6)),
                Some(l) => l
                    .parse::<u32>()
                    .ok()
                    .filter(|l| (1..=9).contains(l))
                    .map(Compression::Gzip),
            },
            "none" if level.is_none() => Some(Compression::None),
            _ => None,
        }
    }

    /// File-name suffix of a compressed object (`.zst`, `.gz`, or nothing).
    pub fn extension(&self) -> &'static str {
        match self {
            Compression::Zstd(_) => ".zst",
            Compression::Gzip(_) => ".gz",
            Compression::None => "",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Databases {
    All,
    List(Vec<String>),
}

impl fmt::Display for Databases {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Databases::All => f.write_str("*"),
            Databases::List(l) => f.write_str(&l.join(",")),
        }
    }
}
