//! Telling people: job events → notification services (`PGBACKUP_NOTIFY_URLS`) and dead-man
//! pings (`PGBACKUP_PING_URL`, `pgbackup.ping_url`).
//!
//! Delivery never fails or delays a backup: every message is sent by a task of its own, tried
//! again after [`RETRY_DELAYS`] when the service is unreachable or busy, and a message that
//! could not be delivered is logged and counted in `/metrics`. URLs carry secrets: logs,
//! status and metrics name a service and its host only, and error texts are scrubbed of every
//! part of the URL ([`scrub`]).

pub mod ping;
pub mod service;

use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::Serialize;
use tokio_util::task::TaskTracker;

use crate::model::layout::Kind;
use ping::{PingUrl, Signal};
use service::{Body, Configured, Request};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum EventKind {
    #[serde(rename = "backup.failed")]
    BackupFailed,
    #[serde(rename = "backup.succeeded")]
    BackupSucceeded,
    #[serde(rename = "retention.deleted")]
    RetentionDeleted,
    #[serde(rename = "drill.failed")]
    DrillFailed,
    #[serde(rename = "drill.succeeded")]
    DrillSucceeded,
    #[serde(rename = "sync.failed")]
    SyncFailed,
    #[serde(rename = "sync.succeeded")]
    SyncSucceeded,
}

impl EventKind {
    pub fn name(self) -> &'static str {
        match self {
            EventKind::BackupFailed => "backup.failed",
            EventKind::BackupSucceeded => "backup.succeeded",
            EventKind::RetentionDeleted => "retention.deleted",
            EventKind::DrillFailed => "drill.failed",
            EventKind::DrillSucceeded => "drill.succeeded",
            EventKind::SyncFailed => "sync.failed",
            EventKind::SyncSucceeded => "sync.succeeded",
        }
    }
}

/// Which events a service is sent (`PGBACKUP_NOTIFY_LEVEL`, or `level=` on one URL).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Level {
    /// Failures only.
    #[default]
    Failure,
    /// Failures and successes.
    Success,
    /// Failures, successes and retention deletions.
    All,
}

impl Level {
    pub const EXPECTED: &str = "failure, success or all";

    pub fn parse(s: &str) -> Option<Level> {
        match s.trim().to_ascii_lowercase().as_str() {
            "failure" => Some(Level::Failure),
            "success" => Some(Level::Success),
            "all" => Some(Level::All),
            _ => None,
        }
    }

    pub fn includes(self, event: EventKind) -> bool {
        match event {
            EventKind::BackupFailed | EventKind::DrillFailed | EventKind::SyncFailed => true,
            EventKind::BackupSucceeded | EventKind::DrillSucceeded | EventKind::SyncSucceeded => {
                self != Level::Failure
            }
            EventKind::RetentionDeleted => self == Level::All,
        }
    }
}

/// The JSON body of a generic webhook, and what the chat messages say.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub event: EventKind,
    pub target: String,
    pub kind: Kind,
    /// `schedule`, `startup`, `manual` or `once`.
    pub trigger: String,
    pub backup_id: Option<String>,
    pub databases: Vec<String>,
    /// Stored bytes (compressed).
    pub bytes: u64,
    pub duration_seconds: f64,
    pub error: Option<String>,
    /// The backup ids retention deleted.
    pub deleted: Vec<String>,
    pub time: DateTime<Utc>,
}

impl Event {
    /// One line: what happened to which target.
    pub fn title(&self) -> String {
        match self.event {
            EventKind::BackupFailed => format!("{} backup of {} failed", self.kind, self.target),
            EventKind::BackupSucceeded => {
                format!("{} backup of {} succeeded", self.kind, self.target)
            }
            EventKind::RetentionDeleted => format!(
                "retention deleted {} backup(s) of {}",
                self.deleted.len(),
                self.target
            ),
            EventKind::DrillFailed => {
                format!("{} restore drill of {} failed", self.kind, self.target)
            }
            EventKind::DrillSucceeded => {
                format!("{} restore drill of {} passed", self.kind, self.target)
            }
            EventKind::SyncFailed => format!("copy into {} failed", self.target),
            EventKind::SyncSucceeded => format!("copy into {} restored", self.target),
        }
    }

    /// The details under the title, at most `max` characters.
    pub fn body(&self, max: usize) -> String {
        let s = match self.event {
            EventKind::BackupFailed | EventKind::DrillFailed | EventKind::SyncFailed => format!(
                "After {:.1} s ({} run): {}",
                self.duration_seconds,
                self.trigger,
                self.error.as_deref().unwrap_or("(no error text)")
            ),
            EventKind::BackupSucceeded => {
                let what = match self.kind {
                    Kind::Logical => format!("{} database(s)", self.databases.len()),
                    Kind::Physical => "base backup".to_string(),
                };
                format!(
                    "{} ({what}, {}, {:.1} s, {} run)",
                    self.backup_id.as_deref().unwrap_or("?"),
                    crate::table::human_bytes(self.bytes),
                    self.duration_seconds,
                    self.trigger
                )
            }
            EventKind::RetentionDeleted => self.deleted.join(", "),
            EventKind::SyncSucceeded => format!(
                "{} restored ({} database(s), {:.1} s, {} run)",
                self.backup_id.as_deref().unwrap_or("?"),
                self.databases.len(),
                self.duration_seconds,
                self.trigger
            ),
            EventKind::DrillSucceeded => format!(
                "{} restored into a throwaway server and matched its recorded facts ({} database(s), {:.1} s, {} run)",
                self.backup_id.as_deref().unwrap_or("?"),
                self.databases.len(),
                self.duration_seconds,
                self.trigger
            ),
        };
        truncate(&s, max)
    }

    /// Title and body as one chat message of at most `max` characters.
    pub fn text(&self, max: usize) -> String {
        let mark = match self.event {
            EventKind::BackupFailed | EventKind::DrillFailed | EventKind::SyncFailed => "❌",
            EventKind::BackupSucceeded | EventKind::DrillSucceeded | EventKind::SyncSucceeded => {
                "✅"
            }
            EventKind::RetentionDeleted => "🗑",
        };
        truncate(
            &format!("{mark} pgbackup: {}\n{}", self.title(), self.body(max)),
            max,
        )
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
    t.push('…');
    t
}

/// Replaces every secret part in `msg` with `***`, longest first.
pub fn scrub(msg: &str, secrets: &[String]) -> String {
    let mut secrets: Vec<&String> = secrets.iter().filter(|s| !s.is_empty()).collect();
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut out = msg.to_string();
    for s in secrets {
        out = out.replace(s.as_str(), "***");
    }
    out
}

/// Waits before the second and third try of a message: a service restarting or rate-limiting
/// usually answers again within seconds, and a backup's outcome is worth that wait.
pub const RETRY_DELAYS: [Duration; 2] = [Duration::from_secs(2), Duration::from_secs(10)];

/// The longest one request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The notification settings: `PGBACKUP_NOTIFY_URLS`, `PGBACKUP_NOTIFY_LEVEL`,
/// `PGBACKUP_PING_URL`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settings {
    pub services: Vec<Configured>,
    pub level: Level,
    /// For targets without their own `pgbackup.ping_url`.
    pub ping: Option<PingUrl>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NotifyLabels {
    pub service: String,
    pub event: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PingLabels {
    pub target: String,
    pub signal: String,
    pub result: String,
}

/// The counters a [`Notifier`] keeps (registered with the other metrics).
#[derive(Clone, Default)]
pub struct Counters {
    pub notifications: Family<NotifyLabels, Counter>,
    pub pings: Family<PingLabels, Counter>,
}

/// Sends events and pings in the background.
pub struct Notifier {
    settings: Settings,
    client: reqwest::Client,
    tasks: TaskTracker,
    counters: Counters,
    /// [`RETRY_DELAYS`]; shorter in tests.
    delays: Vec<Duration>,
}

/// A start ping on its way: the job's end ping is sent after it, so a monitor never sees them
/// out of order.
pub type Pending = Option<tokio::task::JoinHandle<()>>;

impl Notifier {
    pub fn new(settings: Settings, counters: Counters) -> Notifier {
        let client = crate::http_client()
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("pgbackup/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("HTTP client (TLS roots)");
        Notifier {
            settings,
            client,
            tasks: TaskTracker::new(),
            counters,
            delays: RETRY_DELAYS.to_vec(),
        }
    }

    /// No services, no pings (tests, commands that send nothing).
    pub fn off() -> Notifier {
        Notifier::new(Settings::default(), Counters::default())
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Sends `event` to every service that wants it, in the background.
    pub fn notify(&self, event: Event) {
        for svc in &self.settings.services {
            if !svc.wants(event.event, self.settings.level) {
                continue;
            }
            let labels = NotifyLabels {
                service: svc.name().to_string(),
                event: event.event.name().to_string(),
                result: String::new(),
            };
            let requests = svc.requests(&event);
            let (shown, secrets) = (svc.shown(), svc.secrets());
            let (client, counters) = (self.client.clone(), self.counters.clone());
            let delays = self.delays.clone();
            let what = format!("{} notification ({})", event.event.name(), event.target);
            self.tasks.spawn(async move {
                let mut ok = true;
                for r in requests {
                    if let Err(e) = deliver(&client, &r, &delays).await {
                        ok = false;
                        tracing::warn!(service = %shown, "Could not deliver the {what} to {shown}: {}", scrub(&e, &secrets));
                    }
                }
                if ok {
                    tracing::debug!(service = %shown, "Delivered the {what} to {shown}.");
                }
                counters
                    .notifications
                    .get_or_create(&NotifyLabels {
                        result: if ok { "sent" } else { "failed" }.into(),
                        ..labels
                    })
                    .inc();
            });
        }
    }

    /// The ping URL for a target: its own label's, or `PGBACKUP_PING_URL`.
    pub fn ping_url<'a>(&'a self, own: Option<&'a PingUrl>) -> Option<&'a PingUrl> {
        own.or(self.settings.ping.as_ref())
    }

    /// Sends `signal` to `url` in the background, after `after` (the job's start ping) is done.
    pub fn ping(
        &self,
        target: &str,
        url: Option<&PingUrl>,
        signal: Signal,
        after: Pending,
    ) -> Pending {
        let url = url?;
        let Some(request) = url.request(&signal) else {
            return after;
        };
        let (shown, secrets) = (url.shown(), url.secrets());
        let (client, counters) = (self.client.clone(), self.counters.clone());
        let delays = self.delays.clone();
        let labels = PingLabels {
            target: target.to_string(),
            signal: signal.name().to_string(),
            result: String::new(),
        };
        Some(self.tasks.spawn(async move {
            if let Some(previous) = after {
                let _ = previous.await;
            }
            let result = deliver(&client, &request, &delays).await;
            if let Err(e) = &result {
                tracing::warn!(target_id = %labels.target, "Could not send the {} ping ({shown}): {}", labels.signal, scrub(e, &secrets));
            }
            counters
                .pings
                .get_or_create(&PingLabels {
                    result: if result.is_ok() { "sent" } else { "failed" }.into(),
                    ..labels
                })
                .inc();
        }))
    }

    /// Waits up to `within` for messages still on their way (a single-shot run before it
    /// exits); returns how many were given up.
    pub async fn flush(&self, within: Duration) -> usize {
        self.tasks.close();
        let done = tokio::time::timeout(within, self.tasks.wait()).await;
        self.tasks.reopen();
        if done.is_ok() { 0 } else { self.tasks.len() }
    }
}

/// Sends one request, trying again after [`RETRY_DELAYS`] when the service is unreachable,
/// timed out, rate-limiting (429) or failing (5xx). The error names no URL.
async fn deliver(client: &reqwest::Client, r: &Request, delays: &[Duration]) -> Result<(), String> {
    let mut attempt = 0;
    loop {
        let (message, again) = match send(client, r).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if !again || attempt >= delays.len() {
            let tries = attempt + 1;
            return Err(if tries > 1 {
                format!("{message} (tried {tries} times)")
            } else {
                message
            });
        }
        tokio::time::sleep(delays[attempt]).await;
        attempt += 1;
    }
}

/// One try: `Err((message, worth trying again))`.
async fn send(client: &reqwest::Client, r: &Request) -> Result<(), (String, bool)> {
    let mut req = client.request(r.method.clone(), r.url.clone());
    for (k, v) in &r.headers {
        req = req.header(k, v);
    }
    req = match &r.body {
        Body::None => req,
        Body::Json(v) => req.json(v),
        Body::Text(t) => req
            .header(reqwest::header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(t.clone()),
    };
    let resp = req.send().await.map_err(|e| {
        let e = e.without_url();
        let mut msg = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            msg.push_str(&format!(": {s}"));
            source = s.source();
        }
        (msg, true)
    })?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let text: String = resp
        .text()
        .await
        .unwrap_or_default()
        .chars()
        .take(200)
        .collect();
    let again = status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
    Err((format!("HTTP {status}: {}", text.trim()), again))
}

#[cfg(test)]
mod tests;
