//! Notification URLs (`PGBACKUP_NOTIFY_URLS`) in the shoutrrr style users know from
//! docker-volume-backup and watchtower: the scheme chooses the service. Parsing and the
//! request each service wants are pure; [`super::Notifier`] sends them.
//!
//! A URL holds its service's secret (a webhook token, a bot token, a password), so an error
//! about one names its position and scheme, never its text, and [`Configured::shown`] is all a
//! log line, the status or a metric label ever carries.

use reqwest::Url;
use serde_json::json;

use super::{Event, EventKind, Level};

/// One request to send: always a POST (GET for Uptime Kuma's pings).
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub method: reqwest::Method,
    pub url: Url,
    pub headers: Vec<(String, String)>,
    pub body: Body,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    None,
    Json(serde_json::Value),
    Text(String),
}

/// What a URL sends to.
#[derive(Debug, Clone, PartialEq)]
pub enum Service {
    /// A JSON body (the [`Event`]) to any HTTP(S) endpoint, with optional headers.
    Webhook {
        url: Url,
        headers: Vec<(String, String)>,
    },
    /// A Slack incoming webhook.
    Slack { url: Url },
    /// A Discord channel webhook.
    Discord { url: Url },
    /// An ntfy topic (ntfy.sh or a server of one's own).
    Ntfy {
        url: Url,
        auth: Option<(String, String)>,
        token: Option<String>,
    },
    /// A Telegram bot writing to one or more chats.
    Telegram { api: Url, chats: Vec<String> },
}

/// A service and which events it is sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Configured {
    pub service: Service,
    /// The URL's own `level=`; `None` = `PGBACKUP_NOTIFY_LEVEL`.
    pub level: Option<Level>,
}

/// The schemes [`parse`] reads, for error messages and the README.
pub const SCHEMES: &str =
    "generic://, generic+http://, https://, http://, slack://, discord://, ntfy://, telegram://";

impl Configured {
    /// The service's name, as the `service` label of `pgbackup_notifications_total`.
    pub fn name(&self) -> &'static str {
        match self.service {
            Service::Webhook { .. } => "webhook",
            Service::Slack { .. } => "slack",
            Service::Discord { .. } => "discord",
            Service::Ntfy { .. } => "ntfy",
            Service::Telegram { .. } => "telegram",
        }
    }

    /// How logs and the status name it: the service and, for servers people run themselves,
    /// the host (never a path, a query or credentials).
    pub fn shown(&self) -> String {
        match &self.service {
            Service::Webhook { url, .. } | Service::Ntfy { url, .. } => {
                format!("{} on {}", self.name(), host_port(url))
            }
            _ => self.name().to_string(),
        }
    }

    /// Whether `event` is sent here, given the default level.
    pub fn wants(&self, event: EventKind, default: Level) -> bool {
        self.level.unwrap_or(default).includes(event)
    }

    /// The requests that deliver `event` (one per chat for Telegram).
    pub fn requests(&self, event: &Event) -> Vec<Request> {
        let post = |url: &Url, headers: Vec<(String, String)>, body: Body| Request {
            method: reqwest::Method::POST,
            url: url.clone(),
            headers,
            body,
        };
        match &self.service {
            Service::Webhook { url, headers } => vec![post(
                url,
                headers.clone(),
                Body::Json(serde_json::to_value(event).expect("an event serialises")),
            )],
            Service::Slack { url } => vec![post(
                url,
                vec![],
                Body::Json(json!({ "text": event.text(40_000) })),
            )],
            // Discord refuses content over 2000 characters.
            Service::Discord { url } => vec![post(
                url,
                vec![],
                Body::Json(json!({ "content": event.text(2000) })),
            )],
            Service::Ntfy { url, auth, token } => {
                let mut headers = vec![
                    ("Title".to_string(), event.title()),
                    (
                        "Tags".to_string(),
                        match event.event {
                            EventKind::BackupFailed
                            | EventKind::DrillFailed
                            | EventKind::SyncFailed => "x",
                            EventKind::BackupSucceeded
                            | EventKind::DrillSucceeded
                            | EventKind::SyncSucceeded => "white_check_mark",
                            EventKind::RetentionDeleted => "wastebasket",
                        }
                        .to_string(),
                    ),
                ];
                if matches!(
                    event.event,
                    EventKind::BackupFailed | EventKind::DrillFailed
                ) {
                    headers.push(("Priority".into(), "high".into()));
                }
                if let Some((user, pass)) = auth {
                    headers.push(("Authorization".into(), basic_auth(user, pass)));
                } else if let Some(t) = token {
                    headers.push(("Authorization".into(), format!("Bearer {t}")));
                }
                vec![post(url, headers, Body::Text(event.body(4000)))]
            }
            // Telegram refuses messages over 4096 characters.
            Service::Telegram { api, chats } => chats
                .iter()
                .map(|chat| {
                    post(
                        api,
                        vec![],
                        Body::Json(json!({ "chat_id": chat, "text": event.text(4000) })),
                    )
                })
                .collect(),
        }
    }

    /// The parts of the URL that must never be shown: replaced in error messages.
    pub fn secrets(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut of_url = |u: &Url| {
            out.push(u.to_string());
            out.extend(u.path_segments().into_iter().flatten().map(String::from));
            out.extend(u.query().map(String::from));
            out.extend(u.password().map(String::from));
        };
        match &self.service {
            Service::Webhook { url, headers } => {
                of_url(url);
                out.extend(headers.iter().map(|(_, v)| v.clone()));
            }
            Service::Slack { url } | Service::Discord { url } => of_url(url),
            Service::Ntfy { url, auth, token } => {
                of_url(url);
                out.extend(auth.iter().map(|(_, p)| p.clone()));
                out.extend(token.clone());
            }
            Service::Telegram { api, .. } => of_url(api),
        }
        out.retain(|s| s.len() >= 4);
        out
    }
}

pub(super) fn host_port(url: &Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => "(no host)".to_string(),
    }
}

fn basic_auth(user: &str, pass: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

/// Splits `PGBACKUP_NOTIFY_URLS` into URLs: separated by spaces, newlines or commas (a comma
/// inside a URL, as in Telegram's `chats=a,b`, stays: only one followed by `scheme://` splits).
pub fn split_list(s: &str) -> Vec<String> {
    let starts_url = |piece: &str| {
        piece.split_once("://").is_some_and(|(scheme, _)| {
            !scheme.is_empty()
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '+')
        })
    };
    let mut out: Vec<String> = Vec::new();
    for word in s.split_whitespace() {
        // The entry this word is adding to: a new word never continues the last one's URL.
        let mut current: Option<usize> = None;
        for piece in word.split(',') {
            match current {
                Some(i) if !starts_url(piece) => {
                    out[i].push(',');
                    out[i].push_str(piece);
                }
                _ if piece.is_empty() => {}
                _ => {
                    out.push(piece.to_string());
                    current = Some(out.len() - 1);
                }
            }
        }
    }
    out.into_iter()
        .map(|u| u.trim_end_matches(',').to_string())
        .collect()
}

/// Parses one notification URL. The error says what is wrong without repeating the URL.
pub fn parse(s: &str) -> Result<Configured, String> {
    let (scheme, _) = s
        .split_once("://")
        .ok_or_else(|| format!("not a URL; expected one of {SCHEMES}"))?;
    let scheme = scheme.to_ascii_lowercase();
    // The url crate parses any scheme; the service's own URL is rebuilt from the parts.
    let u = Url::parse(s).map_err(|e| format!("a {scheme}:// URL that cannot be read ({e})"))?;
    let mut level = None;
    let mut headers = Vec::new();
    let mut rest: Vec<(String, String)> = Vec::new();
    for (k, v) in u.query_pairs() {
        if k == "level" {
            level = Some(Level::parse(&v).ok_or_else(|| {
                format!(
                    "level={v} in a {scheme}:// URL: expected {}",
                    Level::EXPECTED
                )
            })?);
        } else if let Some(h) = k.strip_prefix('@') {
            if h.is_empty() || !h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                return Err(format!(
                    "a header name after @ in a {scheme}:// URL: {h:?} is not one"
                ));
            }
            headers.push((h.to_string(), v.into_owned()));
        } else {
            rest.push((k.into_owned(), v.into_owned()));
        }
    }
    let host = u.host_str().unwrap_or("").to_string();
    let segments: Vec<String> = u
        .path_segments()
        .map(|s| s.filter(|p| !p.is_empty()).map(String::from).collect())
        .unwrap_or_default();
    let service = match scheme.as_str() {
        "generic" | "generic+https" | "generic+http" | "https" | "http" => {
            let http = if scheme == "http" || scheme == "generic+http" {
                "http"
            } else {
                "https"
            };
            if host.is_empty() {
                return Err(format!("a host in the {scheme}:// URL"));
            }
            let mut url = rebuild(http, &u, &host)?;
            set_query(&mut url, &rest);
            Service::Webhook { url, headers }
        }
        "slack" => {
            // slack://hook:T000-B000-XXXX@webhook, or the legacy slack://T000/B000/XXXX.
            let parts: Vec<String> = if u.username() == "hook" {
                u.password()
                    .unwrap_or("")
                    .split(['-', '/'])
                    .map(String::from)
                    .collect()
            } else {
                std::iter::once(host.clone()).chain(segments).collect()
            };
            if parts.len() != 3 || parts.iter().any(|p| p.is_empty()) {
                return Err("slack://hook:T…-B…-X…@webhook or slack://T…/B…/X… (the three parts of the webhook URL)".into());
            }
            let url = Url::parse(&format!(
                "https://hooks.slack.com/services/{}",
                parts.join("/")
            ))
            .map_err(|_| "slack:// with the three parts of the webhook URL".to_string())?;
            Service::Slack { url }
        }
        "discord" => {
            // discord://token@webhook-id
            let token = u.username();
            if token.is_empty() || host.is_empty() {
                return Err(
                    "discord://TOKEN@WEBHOOK_ID (the last two parts of the webhook URL)".into(),
                );
            }
            let url = Url::parse(&format!("https://discord.com/api/webhooks/{host}/{token}"))
                .map_err(|_| "discord://TOKEN@WEBHOOK_ID".to_string())?;
            Service::Discord { url }
        }
        "ntfy" => {
            // ntfy://[user:password@]host[:port]/topic[?scheme=http][&token=tk_…]
            let http = match rest
                .iter()
                .find(|(k, _)| k == "scheme")
                .map(|(_, v)| v.as_str())
            {
                None | Some("https") => "https",
                Some("http") => "http",
                Some(other) => {
                    return Err(format!(
                        "scheme={other} in an ntfy:// URL: expected http or https"
                    ));
                }
            };
            if host.is_empty() || segments.len() != 1 {
                return Err("ntfy://HOST/TOPIC (ntfy.sh or your server, then the topic)".into());
            }
            let mut url = Url::parse(&format!("{http}://{host}/"))
                .map_err(|_| "ntfy://HOST/TOPIC".to_string())?;
            url.set_port(u.port())
                .map_err(|_| "ntfy://HOST:PORT/TOPIC".to_string())?;
            url.set_path(&segments[0]);
            let auth = (!u.username().is_empty())
                .then(|| (decode(u.username()), decode(u.password().unwrap_or(""))));
            let token = rest
                .iter()
                .find(|(k, _)| k == "token")
                .map(|(_, v)| v.clone());
            Service::Ntfy { url, auth, token }
        }
        "telegram" => {
            // telegram://BOT_TOKEN@telegram?chats=@channel,12345
            let token = format!("{}:{}", u.username(), u.password().unwrap_or(""));
            let chats: Vec<String> = rest
                .iter()
                .find(|(k, _)| k == "chats")
                .map(|(_, v)| {
                    v.split(',')
                        .map(|c| c.trim().to_string())
                        .filter(|c| !c.is_empty())
                        .collect()
                })
                .unwrap_or_default();
            if u.password().is_none() || chats.is_empty() {
                return Err("telegram://BOT_TOKEN@telegram?chats=CHAT[,CHAT…] (the bot token has a colon; chats are ids or @channel names)".into());
            }
            let api = Url::parse(&format!("https://api.telegram.org/bot{token}/sendMessage"))
                .map_err(|_| "telegram://BOT_TOKEN@telegram?chats=…".to_string())?;
            Service::Telegram { api, chats }
        }
        other => {
            return Err(format!(
                "{other}:// is not a service pgbackup sends to; expected one of {SCHEMES}"
            ));
        }
    };
    Ok(Configured { service, level })
}

/// A URL's user or password, `%xx` decoded (the url crate keeps them encoded).
fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// `scheme://[user:pass@]host[:port]/path` of `u` under another scheme, without the query.
fn rebuild(scheme: &str, u: &Url, host: &str) -> Result<Url, String> {
    let mut s = format!("{scheme}://");
    if !u.username().is_empty() {
        s.push_str(u.username());
        if let Some(p) = u.password() {
            s.push(':');
            s.push_str(p);
        }
        s.push('@');
    }
    s.push_str(host);
    if let Some(p) = u.port() {
        s.push_str(&format!(":{p}"));
    }
    s.push_str(u.path());
    Url::parse(&s).map_err(|e| format!("a {scheme} URL that cannot be read ({e})"))
}

fn set_query(url: &mut Url, pairs: &[(String, String)]) {
    if pairs.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
}

#[cfg(test)]
mod tests;
