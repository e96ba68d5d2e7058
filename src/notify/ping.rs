//! Dead-man pings (`PGBACKUP_PING_URL`, `pgbackup.ping_url`): a monitor that alerts when a
//! backup's ping stops arriving. Two conventions:
//! - healthchecks.io (and compatible: Healthchecks self-hosted, Cronitor's ping API…):
//!   `URL/start` when a job starts, `URL` on success, `URL/fail` with the error as the body;
//! - Uptime Kuma push monitors (a path with `/api/push/`): `?status=up&msg=OK&ping=MS` on
//!   success, `?status=down&msg=ERROR` on failure (Kuma has no start signal).
//!
//! The URL is a secret (anyone holding it can report success): it is shown as its host only.

use reqwest::Url;
use serde::Serialize;

use super::service::{Body, Request, host_port};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Style {
    Healthchecks,
    UptimeKuma,
}

#[derive(Clone, PartialEq, Eq)]
pub struct PingUrl {
    url: Url,
    pub style: Style,
}

/// What a ping reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    Start,
    Success { duration_ms: u64 },
    Fail { error: String },
}

impl Signal {
    /// The `signal` label of `pgbackup_pings_total`.
    pub fn name(&self) -> &'static str {
        match self {
            Signal::Start => "start",
            Signal::Success { .. } => "success",
            Signal::Fail { .. } => "fail",
        }
    }
}

impl std::fmt::Debug for PingUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PingUrl({})", self.shown())
    }
}

impl Serialize for PingUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.shown())
    }
}

/// How a ping URL is expected to look, for error messages.
pub const EXPECTED: &str = "an http(s) URL such as https://hc-ping.com/<uuid> (healthchecks.io) or https://kuma.example.com/api/push/<token> (Uptime Kuma)";

impl PingUrl {
    /// Parses a ping URL; the error never repeats it.
    pub fn parse(s: &str) -> Result<PingUrl, String> {
        let url = Url::parse(s.trim()).map_err(|e| format!("{EXPECTED} ({e})"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
            return Err(EXPECTED.to_string());
        }
        let style = if url.path().contains("/api/push/") {
            Style::UptimeKuma
        } else {
            Style::Healthchecks
        };
        Ok(PingUrl { url, style })
    }

    /// For logs and status: the monitor's host, never the path (the check's secret).
    pub fn shown(&self) -> String {
        let style = match self.style {
            Style::Healthchecks => "healthchecks-style",
            Style::UptimeKuma => "Uptime Kuma",
        };
        format!("{style} ping to {}", host_port(&self.url))
    }

    /// What must never appear in a message about this URL.
    pub fn secrets(&self) -> Vec<String> {
        let mut out = vec![self.url.to_string()];
        out.extend(
            self.url
                .path_segments()
                .into_iter()
                .flatten()
                .filter(|s| s.len() >= 4)
                .map(String::from),
        );
        out.extend(self.url.query().map(String::from));
        out
    }

    /// The request reporting `signal`, if this style has one for it. Pure.
    pub fn request(&self, signal: &Signal) -> Option<Request> {
        match self.style {
            Style::Healthchecks => {
                let mut url = self.url.clone();
                let suffix = match signal {
                    Signal::Start => Some("start"),
                    Signal::Success { .. } => None,
                    Signal::Fail { .. } => Some("fail"),
                };
                if let Some(suffix) = suffix {
                    let path = format!("{}/{suffix}", url.path().trim_end_matches('/'));
                    url.set_path(&path);
                }
                let body = match signal {
                    // healthchecks.io keeps the body (up to 100 kB) as the ping's log.
                    Signal::Fail { error } => Body::Text(error.clone()),
                    _ => Body::None,
                };
                Some(Request {
                    method: reqwest::Method::POST,
                    url,
                    headers: vec![],
                    body,
                })
            }
            Style::UptimeKuma => {
                let (status, msg, ping) = match signal {
                    Signal::Start => return None,
                    Signal::Success { duration_ms } => ("up", "OK".to_string(), Some(*duration_ms)),
                    Signal::Fail { error } => {
                        ("down", error.chars().take(250).collect::<String>(), None)
                    }
                };
                let mut url = self.url.clone();
                let kept: Vec<(String, String)> = url
                    .query_pairs()
                    .filter(|(k, _)| !matches!(k.as_ref(), "status" | "msg" | "ping"))
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect();
                {
                    let mut q = url.query_pairs_mut();
                    q.clear().extend_pairs(&kept);
                    q.append_pair("status", status).append_pair("msg", &msg);
                    q.append_pair("ping", &ping.map(|p| p.to_string()).unwrap_or_default());
                }
                Some(Request {
                    method: reqwest::Method::GET,
                    url,
                    headers: vec![],
                    body: Body::None,
                })
            }
        }
    }
}
