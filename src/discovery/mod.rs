//! Live target discovery: list + watch + periodic resync + reconnect with backoff.
//!
//! [`Registry`] is the pure state (container → parsed target); [`run`] keeps it in step with the
//! daemon. Missed events (a dropped stream, a daemon restart) are healed by the periodic resync,
//! which replaces the whole registry with a fresh listing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::{RwLock, watch};

use crate::config::Defaults;
use crate::config::declared::Declared;
use crate::config::endpoint::Endpoint;
use crate::config::labels::{self, LabelError, TargetSpec};
use crate::engine::docker::{Container, ContainerEvent, DockerClient, DockerError};
use crate::model::TargetId;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Target {
    pub target: TargetId,
    /// The container's name, id and image; empty for a target declared by URL.
    pub container: String,
    pub container_id: String,
    pub image: String,
    /// A target declared by `PGBACKUP_TARGET_<NAME>_URL`: the server it names (shown without
    /// its password). `None` for a labelled container.
    #[serde(
        rename = "url",
        skip_serializing_if = "Option::is_none",
        serialize_with = "redacted"
    )]
    pub endpoint: Option<Endpoint>,
    #[serde(flatten)]
    pub spec: Parsed,
}

fn redacted<S: serde::Serializer>(e: &Option<Endpoint>, s: S) -> Result<S::Ok, S::Error> {
    match e {
        Some(e) => s.serialize_str(&e.redacted()),
        None => s.serialize_none(),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum Parsed {
    Valid { settings: Box<TargetSpec> },
    Invalid { errors: Vec<LabelError> },
}

impl Target {
    /// `None` when the container is not a target (not opted in, a one-off, not running).
    pub fn from_container(c: &Container, defaults: &Defaults) -> Option<Target> {
        if !c.running || !c.in_scope {
            return None;
        }
        // An unparsable `pgbackup.enable` still makes a (invalid) target, so the typo is seen;
        // `parse` reports it.
        let _ = labels::enabled(&c.labels)?;
        let target = TargetId::of(&c.labels, &c.name)?;
        let spec = match labels::parse(&target, &c.labels, &c.env, defaults) {
            Ok(settings) => Parsed::Valid {
                settings: Box::new(settings),
            },
            Err(errors) => Parsed::Invalid { errors },
        };
        Some(Target {
            target,
            container: c.name.clone(),
            container_id: c.id.clone(),
            image: c.image.clone(),
            endpoint: None,
            spec,
        })
    }

    /// A target declared by variables ([`declared`](crate::config::declared)): the same label
    /// rules, errors named by the variables that set them.
    pub fn declared(d: &Declared, defaults: &Defaults) -> Target {
        let target = TargetId {
            project: None,
            service: d.name.clone(),
        };
        let (labels, mut errors) = d.labels();
        let spec = match labels::parse(&target, &labels, &Default::default(), defaults) {
            Ok(settings) if errors.is_empty() => Parsed::Valid {
                settings: Box::new(settings),
            },
            Ok(_) => Parsed::Invalid { errors },
            Err(more) => {
                errors.extend(more.into_iter().map(|e| d.rename(e)));
                Parsed::Invalid { errors }
            }
        };
        Target {
            target,
            container: String::new(),
            container_id: String::new(),
            image: String::new(),
            endpoint: d.endpoint.clone().ok(),
            spec,
        }
    }

    pub fn settings(&self) -> Option<&TargetSpec> {
        match &self.spec {
            Parsed::Valid { settings } => Some(settings),
            Parsed::Invalid { .. } => None,
        }
    }
}

/// A container that scheduled copies restore into (`pgbackup.sync.from`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SyncDest {
    pub destination: TargetId,
    pub container: String,
    pub container_id: String,
    /// The destination is itself a labelled backup target (`pgbackup.enable=true`).
    pub is_target: bool,
    #[serde(flatten)]
    pub spec: SyncParsed,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum SyncParsed {
    Valid { settings: Box<labels::SyncSpec> },
    Invalid { errors: Vec<LabelError> },
}

impl SyncDest {
    /// `None` when the container carries no `pgbackup.sync.from` (or is not running, or out of
    /// scope).
    pub fn from_container(c: &Container) -> Option<SyncDest> {
        if !c.running || !c.in_scope {
            return None;
        }
        let spec = match labels::parse_sync(&c.labels)? {
            Ok(s) => SyncParsed::Valid {
                settings: Box::new(s),
            },
            Err(errors) => SyncParsed::Invalid { errors },
        };
        Some(SyncDest {
            destination: TargetId::of(&c.labels, &c.name)?,
            container: c.name.clone(),
            container_id: c.id.clone(),
            is_target: matches!(labels::enabled(&c.labels), Some(Ok(()))),
            spec,
        })
    }

    pub fn settings(&self) -> Option<&labels::SyncSpec> {
        match &self.spec {
            SyncParsed::Valid { settings } => Some(settings),
            SyncParsed::Invalid { .. } => None,
        }
    }
}

/// Targets keyed by container id (two containers of one scaled service are both visible).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Registry {
    by_container: BTreeMap<String, Target>,
    /// Targets declared by URL (from the defaults of the last listing).
    declared: Vec<Target>,
}

impl Registry {
    pub fn upsert(&mut self, c: &Container, defaults: &Defaults) -> bool {
        match Target::from_container(c, defaults) {
            Some(t) => self.by_container.insert(c.id.clone(), t.clone()) != Some(t),
            None => self.by_container.remove(&c.id).is_some(),
        }
    }

    pub fn remove(&mut self, container_id: &str) -> bool {
        self.by_container.remove(container_id).is_some()
    }

    /// Replaces everything with a fresh listing; returns whether anything changed.
    pub fn replace_all(&mut self, containers: &[Container], defaults: &Defaults) -> bool {
        let mut next = Registry::declaring(defaults);
        for c in containers {
            next.upsert(c, defaults);
        }
        let changed = next != *self;
        *self = next;
        changed
    }

    /// No containers yet; the targets `defaults` declare by URL.
    pub fn declaring(defaults: &Defaults) -> Registry {
        Registry {
            by_container: BTreeMap::new(),
            declared: defaults
                .declared
                .iter()
                .map(|d| Target::declared(d, defaults))
                .collect(),
        }
    }

    /// Targets sorted by identity, then container name. Targets whose folders collide are
    /// invalid here ([`refuse_shared_folders`]).
    pub fn targets(&self) -> Vec<Target> {
        let mut v: Vec<Target> = self.by_container.values().cloned().collect();
        v.extend(self.declared.iter().cloned());
        v.sort_by(|a, b| (&a.target, &a.container).cmp(&(&b.target, &b.container)));
        refuse_shared_folders(&mut v);
        v
    }
}

/// A target's folder is its own: when several targets would write into one folder (a
/// `pgbackup.prefix` naming another target's folder), each of them whose folder is not its
/// default `project/service` becomes invalid, naming the others. Retention and `latest` of one
/// target then never see another's backups. (Containers of one scaled service share a target and
/// its folder; that is not a collision.)
/// The valid targets `names` (or `all`) choose, each once, and the names that choose none (with
/// why: unknown, ambiguous, invalid labels). The one rule `pgctl backup` and `pgctl run --once`
/// share. Pure.
pub fn choose(targets: &[Target], names: &[String], all: bool) -> (Vec<Target>, Vec<String>) {
    let mut chosen: Vec<Target> = Vec::new();
    let mut unknown = Vec::new();
    if all {
        let mut seen = std::collections::BTreeSet::new();
        chosen.extend(
            targets
                .iter()
                .filter(|t| t.settings().is_some() && seen.insert(t.target.clone()))
                .cloned(),
        );
    }
    for name in names {
        let matches: Vec<_> = targets.iter().filter(|t| t.target.matches(name)).collect();
        let mut ids: Vec<_> = matches.iter().map(|t| t.target.clone()).collect();
        ids.dedup();
        match (matches.first(), ids.len()) {
            (Some(t), 1) if t.settings().is_some() => {
                if !chosen.iter().any(|c| c.target == t.target) {
                    chosen.push((*t).clone());
                }
            }
            (Some(t), 1) => unknown.push(format!(
                "{name} (target {} has invalid labels; see pgctl status)",
                t.target
            )),
            (Some(_), _) => unknown.push(format!(
                "{name} (ambiguous: {})",
                ids.iter()
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            (None, _) => unknown.push(name.clone()),
        }
    }
    (chosen, unknown)
}

pub fn refuse_shared_folders(targets: &mut [Target]) {
    let mut by_folder: BTreeMap<String, Vec<TargetId>> = BTreeMap::new();
    for t in targets.iter() {
        if let Some(s) = t.settings() {
            let ids = by_folder.entry(s.prefix.clone()).or_default();
            if !ids.contains(&t.target) {
                ids.push(t.target.clone());
            }
        }
    }
    for t in targets.iter_mut() {
        let Some(prefix) = t.settings().map(|s| s.prefix.clone()) else {
            continue;
        };
        let ids = &by_folder[&prefix];
        if ids.len() < 2 || prefix == t.target.to_string() {
            continue;
        }
        let others: Vec<String> = ids
            .iter()
            .filter(|i| **i != t.target)
            .map(|i| i.to_string())
            .collect();
        t.spec = Parsed::Invalid {
            errors: vec![LabelError {
                label: "pgbackup.prefix".into(),
                value: prefix,
                expected: format!(
                    "a folder of its own: {} also writes there; one target's retention would delete the other's backups",
                    others.join(", ")
                ),
            }],
        };
    }
}

/// What the controller knows about Docker, shared with the HTTP status endpoint.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DockerState {
    pub connected: bool,
    pub host: String,
    pub last_error: Option<String>,
    pub last_sync: Option<DateTime<Utc>>,
}

/// What the controller last learned about the bucket (a probe every [`S3_PROBE_EVERY`]).
#[derive(Debug, Clone, Default, Serialize)]
pub struct S3State {
    /// `None` until the first probe after start-up (start-up itself checked the bucket).
    pub last_error: Option<String>,
    pub last_check: Option<DateTime<Utc>>,
}

pub const S3_PROBE_EVERY: Duration = Duration::from_secs(15);

#[derive(Clone, Default)]
pub struct Shared {
    pub registry: Arc<RwLock<Registry>>,
    pub docker: Arc<RwLock<DockerState>>,
    pub s3: Arc<RwLock<S3State>>,
    /// Containers not opted in that carry `pgbackup.*`-like labels (name → labels).
    pub near_misses: Arc<RwLock<BTreeMap<String, Vec<String>>>>,
    /// Destinations of scheduled copies, from the last listing (sorted by destination).
    pub syncs: Arc<RwLock<Vec<SyncDest>>>,
}

const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Next backoff delay: doubles up to a ceiling. Pure so it is tested without sleeping.
pub fn next_backoff(current: Duration) -> Duration {
    (current * 2).clamp(BACKOFF_MIN, BACKOFF_MAX)
}

/// Runs until `shutdown` flips to true. `changed` is bumped whenever the target set changes.
pub async fn run(
    client: DockerClient,
    host: Option<String>,
    defaults: Defaults,
    resync: Duration,
    shared: Shared,
    changed: watch::Sender<u64>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut client = Some(client);
    let mut backoff = BACKOFF_MIN;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let c = match client.take() {
            Some(c) => c,
            None => match DockerClient::connect_scoped(host.as_deref(), &defaults.scope).await {
                Ok(c) => {
                    tracing::info!(host = c.host(), "Reconnected to the Docker daemon.");
                    c
                }
                Err(e) => {
                    record_error(&shared, &e).await;
                    tracing::warn!(error = %e, retry_in = ?backoff, "Docker daemon unreachable; retrying.");
                    if sleep_or_shutdown(backoff, &mut shutdown).await {
                        return;
                    }
                    backoff = next_backoff(backoff);
                    continue;
                }
            },
        };
        let started = tokio::time::Instant::now();
        match watch_once(&c, &defaults, resync, &shared, &changed, &mut shutdown).await {
            Ok(()) => return,
            Err(e) => {
                if started.elapsed() > BACKOFF_MAX * 2 {
                    backoff = BACKOFF_MIN;
                }
                record_error(&shared, &e).await;
                tracing::warn!(error = %e, retry_in = ?backoff, "Lost the Docker event stream; reconnecting.");
                if sleep_or_shutdown(backoff, &mut shutdown).await {
                    return;
                }
                backoff = next_backoff(backoff);
            }
        }
    }
}

async fn record_error(shared: &Shared, e: &DockerError) {
    let mut d = shared.docker.write().await;
    d.connected = false;
    d.last_error = Some(e.to_string());
}

/// Returns true when shutdown was requested during the sleep.
async fn sleep_or_shutdown(d: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = shutdown.changed() => true,
    }
}

/// One connected session: subscribe, list, then follow events and resync until the stream
/// breaks (Err) or shutdown is requested (Ok).
async fn watch_once(
    client: &DockerClient,
    defaults: &Defaults,
    resync: Duration,
    shared: &Shared,
    changed: &watch::Sender<u64>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), DockerError> {
    // Subscribe from a moment before the listing so an event racing the listing is replayed.
    let since = Utc::now().timestamp() - 1;
    let mut events = Box::pin(client.events(since));
    sync(client, defaults, shared, changed).await?;
    let mut ticker = tokio::time::interval(resync);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            _ = ticker.tick() => sync(client, defaults, shared, changed).await?,
            ev = events.next() => match ev {
                None => return Err(DockerError::Timeout { call: "events (stream ended)" }),
                Some(Err(e)) => return Err(e),
                Some(Ok(ContainerEvent::Gone { id })) => {
                    if shared.registry.write().await.remove(&id) {
                        bump(changed);
                        tracing::info!(container_id = %short(&id), "Container stopped or removed; no longer a target.");
                    }
                }
                Some(Ok(ContainerEvent::Changed { id })) => match client.inspect(&id).await {
                    Ok(c) => {
                        if shared.registry.write().await.upsert(&c, defaults) {
                            bump(changed);
                            log_target(&c, defaults);
                        }
                    }
                    Err(e) if e.is_not_found() => {
                        if shared.registry.write().await.remove(&id) {
                            bump(changed);
                        }
                    }
                    Err(e) => return Err(e),
                },
            }
        }
    }
}

async fn sync(
    client: &DockerClient,
    defaults: &Defaults,
    shared: &Shared,
    changed: &watch::Sender<u64>,
) -> Result<(), DockerError> {
    let containers = client.list_labelled().await?;
    let mut did_change = shared
        .registry
        .write()
        .await
        .replace_all(&containers, defaults);
    // Copy destinations are found at each resync (no event follows them).
    let mut syncs: Vec<SyncDest> = client
        .list_running(&[labels::SYNC_FROM])
        .await?
        .iter()
        .filter_map(SyncDest::from_container)
        .collect();
    syncs.sort_by(|a, b| (&a.destination, &a.container).cmp(&(&b.destination, &b.container)));
    {
        let mut known = shared.syncs.write().await;
        if *known != syncs {
            for d in syncs.iter().filter(|d| !known.contains(d)) {
                match &d.spec {
                    SyncParsed::Valid { settings } => tracing::info!(destination = %d.destination,
                        from = %settings.from, schedule = %settings.schedule, "Copy destination discovered."),
                    SyncParsed::Invalid { errors } => tracing::warn!(destination = %d.destination,
                        "Copy destination skipped, its labels are invalid: {}",
                        errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ")),
                }
            }
            *known = syncs;
            did_change = true;
        }
    }
    {
        let mut d = shared.docker.write().await;
        d.connected = true;
        d.host = client.host().to_string();
        d.last_error = None;
        d.last_sync = Some(Utc::now());
    }
    if did_change {
        bump(changed);
        for c in &containers {
            log_target(c, defaults);
        }
    }
    warn_near_misses(client, shared).await;
    Ok(())
}

/// Logs, once per container, `pgbackup.*`-like labels on containers that are not opted in.
async fn warn_near_misses(client: &DockerClient, shared: &Shared) {
    let Ok(all) = client.list_running_labels().await else {
        return;
    };
    let now: BTreeMap<String, Vec<String>> = all
        .iter()
        .map(|(name, labels)| (name.clone(), labels::near_misses(labels)))
        .filter(|(_, m)| !m.is_empty())
        .collect();
    let mut known = shared.near_misses.write().await;
    for (name, labels) in &now {
        if known.get(name) != Some(labels) {
            tracing::warn!(container = %name, labels = %labels.join(", "),
                "Container has pgbackup-like labels but no pgbackup.enable=true, so it is not backed up: a typo? (the opt-in label is exactly pgbackup.enable)");
        }
    }
    *known = now;
}

fn log_target(c: &Container, defaults: &Defaults) {
    let Some(t) = Target::from_container(c, defaults) else {
        return;
    };
    match &t.spec {
        Parsed::Valid { settings } => tracing::info!(
            target_id = %t.target, container = %t.container, schedule = %settings.schedule,
            method = ?settings.method, "Target discovered."
        ),
        Parsed::Invalid { errors } => {
            for e in errors {
                tracing::error!(target_id = %t.target, container = %t.container, label = %e.label,
                    "Target is invalid and will not be backed up: {e}.");
            }
        }
    }
}

fn bump(changed: &watch::Sender<u64>) {
    changed.send_modify(|n| *n += 1);
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// A compose container `shop-<service>-1` of project `shop`, opted in, with `extra` labels (an
/// empty value removes a label): the fixture of the unit tests.
#[cfg(test)]
pub(crate) fn test_container(
    id: &str,
    service: &str,
    extra: &[(&str, &str)],
    running: bool,
) -> Container {
    let mut labels: std::collections::HashMap<String, String> = [
        ("com.docker.compose.project", "shop"),
        ("com.docker.compose.service", service),
        ("pgbackup.enable", "true"),
    ]
    .iter()
    .chain(extra)
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    labels.retain(|_, v| !v.is_empty());
    Container {
        in_scope: true,
        id: id.into(),
        name: format!("shop-{service}-1"),
        image: "postgres:17".into(),
        labels,
        env: std::collections::HashMap::new(),
        running,
    }
}

/// [`test_container`] (running) parsed with default settings.
#[cfg(test)]
pub(crate) fn test_target(service: &str, extra: &[(&str, &str)]) -> Target {
    let c = test_container(&format!("id-{service}"), service, extra, true);
    Target::from_container(&c, &Defaults::from_map(&Default::default()).unwrap()).unwrap()
}

#[cfg(test)]
mod tests;
