//! The one place that talks to the Docker Engine API (bollard). Everything else sees plain
//! [`Container`] values and [`ContainerEvent`]s.

use std::collections::HashMap;
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::{EventsOptions, InspectContainerOptions, ListContainersOptions};
use futures_util::{Stream, StreamExt};

use crate::config::labels::ENABLE;
use crate::config::scope::{self, Scope};
use crate::engine::container::{Copy, Inspected, Sandbox};
mod exec;
mod lifecycle;
pub use exec::*;
use lifecycle::*;

/// A short call (ping, list, inspect) that takes longer than this is treated as a transient
/// failure; streams (events, exec output) have no overall limit of their own.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("cannot connect to the Docker daemon at {host}: {source}")]
    Connect {
        host: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("Docker API call {call} failed: {source}")]
    Api {
        call: &'static str,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("Docker API call {call} did not answer in time")]
    Timeout { call: &'static str },
    #[error("reading a command's output from the container failed: {0}")]
    Stream(String),
}

impl DockerError {
    /// Worth another try: the daemon was slow, busy or the connection broke. A missing or
    /// stopped container (404, 409) or a bad request is not.
    pub fn is_transient(&self) -> bool {
        match self {
            DockerError::Timeout { .. } | DockerError::Stream(_) => true,
            DockerError::Connect { .. } => true,
            DockerError::Api { source, .. } => match source {
                bollard::errors::Error::DockerResponseServerError { status_code, .. } => {
                    *status_code >= 500
                }
                bollard::errors::Error::HyperResponseError { .. }
                | bollard::errors::Error::IOError { .. }
                | bollard::errors::Error::RequestTimeoutError => true,
                _ => false,
            },
        }
    }

    /// A container that vanished between an event and our inspect is not an error worth
    /// retrying: it is simply gone.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            DockerError::Api {
                source: bollard::errors::Error::DockerResponseServerError {
                    status_code: 404,
                    ..
                },
                ..
            }
        )
    }
}

/// What we need to know about a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    /// False when the container is outside the sidecar's scope (`PGBACKUP_SCOPE`): never a
    /// target, never resolved by name.
    pub in_scope: bool,
    pub id: String,
    /// Without the leading `/`.
    pub name: String,
    pub image: String,
    pub labels: HashMap<String, String>,
    pub env: HashMap<String, String>,
    pub running: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerEvent {
    /// Started or renamed: look at it again.
    Changed { id: String },
    /// Died or destroyed: it is no longer a target.
    Gone { id: String },
}

#[derive(Clone)]
pub struct DockerClient {
    docker: Docker,
    host: String,
    scope: Scope,
    own_project: Option<String>,
}

/// The 64-hex container id in a `…/containers/<id>/hostname` mount source, if any.
fn container_id_in_mountinfo(mounts: &str) -> Option<&str> {
    mounts.lines().find_map(|l| {
        let (_, rest) = l.split_once("/containers/")?;
        let (id, file) = rest.split_once('/')?;
        let is_id = id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit());
        (is_id && file.starts_with("hostname")).then_some(id)
    })
}

async fn timed<T>(
    call: &'static str,
    fut: impl Future<Output = Result<T, bollard::errors::Error>>,
) -> Result<T, DockerError> {
    timed_for(CALL_TIMEOUT, call, fut).await
}

async fn timed_for<T>(
    limit: Duration,
    call: &'static str,
    fut: impl Future<Output = Result<T, bollard::errors::Error>>,
) -> Result<T, DockerError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(DockerError::Api { call, source }),
        Err(_) => Err(DockerError::Timeout { call }),
    }
}

impl DockerClient {
    /// Connects to `host` (`unix://…`, `tcp://…`, `http://…`) or the local socket, negotiates
    /// the API version with the daemon (older engines reject newer versions) and pings it.
    pub async fn connect(host: Option<&str>) -> Result<DockerClient, DockerError> {
        let shown = host.unwrap_or("unix:///var/run/docker.sock").to_string();
        let connect_err = |source| DockerError::Connect {
            host: shown.clone(),
            source,
        };
        let docker = match host {
            Some(h) => Docker::connect_with_host(h),
            None => Docker::connect_with_local_defaults(),
        }
        .map_err(connect_err)?
        // Long-running streams (events, dumps) must not be cut by the client's request timeout;
        // short calls get their own limit in `timed`.
        .with_timeout(Duration::from_secs(7 * 24 * 3600));
        let docker = tokio::time::timeout(CALL_TIMEOUT, docker.negotiate_version())
            .await
            .map_err(|_| DockerError::Timeout {
                call: "negotiate_version",
            })?
            .map_err(connect_err)?;
        let client = DockerClient {
            docker,
            host: shown,
            scope: Scope::Host,
            own_project: None,
        };
        client.ping().await?;
        Ok(client)
    }

    /// Connects and limits every listing to `setting`'s scope, resolved against the compose
    /// project this process runs in.
    pub async fn connect_scoped(
        host: Option<&str>,
        setting: &scope::Setting,
    ) -> Result<DockerClient, DockerError> {
        let mut client = DockerClient::connect(host).await?;
        client.own_project = client
            .own_container()
            .await
            .and_then(|me| me.labels().remove(crate::model::target::COMPOSE_PROJECT));
        client.scope = setting.resolve(client.own_project.as_deref());
        Ok(client)
    }

    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// The compose project of the container this process runs in (the sidecar), if any.
    pub fn own_project(&self) -> Option<&str> {
        self.own_project.as_deref()
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub async fn ping(&self) -> Result<(), DockerError> {
        timed("ping", self.docker.ping()).await.map(|_| ())
    }

    /// Running containers that carry the `pgbackup.enable` label (any value: the label parser
    /// decides what the value means).
    pub async fn list_labelled(&self) -> Result<Vec<Container>, DockerError> {
        self.list_running(&[ENABLE]).await
    }

    /// Running containers in scope carrying every one of `labels` (`name` or `name=value`),
    /// inspected.
    pub async fn list_running(&self, labels: &[&str]) -> Result<Vec<Container>, DockerError> {
        let mut all = self.list_running_anywhere(labels).await?;
        all.retain(|c| c.in_scope);
        Ok(all)
    }

    /// Running containers in scope as (name, labels), from the listing alone (no inspect): cheap
    /// enough to look at every container at each resync.
    pub async fn list_running_labels(
        &self,
    ) -> Result<Vec<(String, HashMap<String, String>)>, DockerError> {
        let opts = ListContainersOptions {
            all: false,
            ..Default::default()
        };
        let summaries = timed("list_containers", self.docker.list_containers(Some(opts))).await?;
        Ok(summaries
            .into_iter()
            .filter_map(|s| {
                let labels = s.labels.unwrap_or_default();
                let name = s.names?.first()?.trim_start_matches('/').to_string();
                self.scope.admits(&labels).then_some((name, labels))
            })
            .collect())
    }

    /// [`DockerClient::list_running`] across the whole host, to explain a name that resolves
    /// only outside the scope.
    pub async fn list_running_anywhere(
        &self,
        labels: &[&str],
    ) -> Result<Vec<Container>, DockerError> {
        let opts = ListContainersOptions {
            all: false,
            filters: (!labels.is_empty()).then(|| {
                HashMap::from([(
                    "label".to_string(),
                    labels.iter().map(|l| l.to_string()).collect(),
                )])
            }),
            ..Default::default()
        };
        let summaries = timed("list_containers", self.docker.list_containers(Some(opts))).await?;
        let mut out = Vec::with_capacity(summaries.len());
        for s in summaries {
            let Some(id) = s.id else { continue };
            // The summary has no environment; inspect gives it (POSTGRES_USER default).
            match self.inspect(&id).await {
                Ok(c) => out.push(c),
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Containers in scope, running or not, whose name contains `fragment`, inspected.
    pub async fn list_named(&self, fragment: &str) -> Result<Vec<Container>, DockerError> {
        let opts = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([(
                "name".to_string(),
                vec![fragment.to_string()],
            )])),
            ..Default::default()
        };
        let summaries = timed("list_containers", self.docker.list_containers(Some(opts))).await?;
        let mut out = Vec::new();
        for s in summaries {
            let Some(id) = s.id else { continue };
            match self.inspect(&id).await {
                Ok(c) if c.in_scope => out.push(c),
                Ok(_) => {}
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    pub async fn inspect(&self, id: &str) -> Result<Container, DockerError> {
        let r = timed(
            "inspect_container",
            self.docker
                .inspect_container(id, None::<InspectContainerOptions>),
        )
        .await?;
        let config = r.config.unwrap_or_default();
        let env = config
            .env
            .unwrap_or_default()
            .into_iter()
            .filter_map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect();
        let labels = config.labels.unwrap_or_default();
        Ok(Container {
            in_scope: self.scope.admits(&labels),
            id: r.id.unwrap_or_else(|| id.to_string()),
            name: r
                .name
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
            image: config.image.unwrap_or_default(),
            labels,
            env,
            running: r.state.and_then(|s| s.running).unwrap_or(false),
        })
    }

    /// Container lifecycle events for labelled containers since `since` (unix seconds), so
    /// nothing between a listing and the subscription is missed. Ends when the connection drops.
    pub fn events(
        &self,
        since: i64,
    ) -> impl Stream<Item = Result<ContainerEvent, DockerError>> + use<> {
        let opts = EventsOptions {
            since: Some(since.to_string()),
            until: None,
            filters: Some(HashMap::from([
                ("type".to_string(), vec!["container".to_string()]),
                (
                    "event".to_string(),
                    ["start", "die", "destroy", "rename"]
                        .map(String::from)
                        .to_vec(),
                ),
                ("label".to_string(), vec![ENABLE.to_string()]),
            ])),
        };
        self.docker.events(Some(opts)).filter_map(|r| async move {
            match r {
                Err(source) => Some(Err(DockerError::Api {
                    call: "events",
                    source,
                })),
                Ok(ev) => {
                    let id = ev.actor.and_then(|a| a.id)?;
                    match ev.action.as_deref()? {
                        "start" | "rename" => Some(Ok(ContainerEvent::Changed { id })),
                        "die" | "destroy" => Some(Ok(ContainerEvent::Gone { id })),
                        _ => None,
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests;
