//! The one place that talks to the Docker Engine API (bollard). Everything else sees plain
//! [`Container`] values and [`ContainerEvent`]s.

use std::collections::HashMap;
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::{EventsOptions, InspectContainerOptions, ListContainersOptions};
use futures_util::{Stream, StreamExt};

use crate::config::labels::ENABLE;
use crate::config::scope::{self, Scope};
use crate::engine::container::{Copy, Inspected};

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

/// The stdout of a command running inside a container (never a TTY), readable as a byte stream.
/// stderr is kept (its last 64 KiB) for error messages; [`ExecStream::finish`] returns the exit
/// code once stdout has ended.
pub struct ExecStream {
    output: std::pin::Pin<
        Box<
            dyn Stream<Item = Result<bollard::container::LogOutput, bollard::errors::Error>> + Send,
        >,
    >,
    pending: bytes::Bytes,
    stderr: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    exec_id: String,
    docker: Docker,
    ended: bool,
}

const STDERR_KEEP: usize = 64 * 1024;

fn keep_tail(buf: &mut Vec<u8>, more: &[u8]) {
    buf.extend_from_slice(more);
    if buf.len() > STDERR_KEEP {
        let cut = buf.len() - STDERR_KEEP;
        buf.drain(..cut);
    }
}

/// How a command inside a container ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecExit {
    pub code: i64,
    pub stderr: String,
}

impl tokio::io::AsyncRead for ExecStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use bollard::container::LogOutput;
        use std::task::Poll;
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                let chunk = self.pending.split_to(n);
                buf.put_slice(&chunk);
                return Poll::Ready(Ok(()));
            }
            if self.ended {
                return Poll::Ready(Ok(()));
            }
            match self.output.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => self.ended = true,
                Poll::Ready(Some(Err(e))) => {
                    self.ended = true;
                    return Poll::Ready(Err(std::io::Error::other(format!(
                        "the output stream from the container broke: {e}"
                    ))));
                }
                Poll::Ready(Some(Ok(LogOutput::StdOut { message })))
                | Poll::Ready(Some(Ok(LogOutput::Console { message }))) => self.pending = message,
                Poll::Ready(Some(Ok(LogOutput::StdErr { message }))) => {
                    keep_tail(&mut self.stderr.lock().expect("stderr lock"), &message)
                }
                Poll::Ready(Some(Ok(LogOutput::StdIn { .. }))) => {}
            }
        }
    }
}

impl ExecStream {
    /// Drains what is left of stdout and returns the exit code and stderr.
    pub async fn finish(mut self) -> Result<ExecExit, DockerError> {
        let mut sink = tokio::io::sink();
        let _ = tokio::io::copy(&mut self, &mut sink).await;
        let stderr =
            String::from_utf8_lossy(&self.stderr.lock().expect("stderr lock")).into_owned();
        // The exec may still be marked running for a moment after its streams close.
        for _ in 0..100 {
            let r = timed("inspect_exec", self.docker.inspect_exec(&self.exec_id)).await?;
            if r.running != Some(true) {
                return Ok(ExecExit {
                    code: r.exit_code.unwrap_or(-1),
                    stderr: stderr.trim().to_string(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(DockerError::Timeout {
            call: "inspect_exec (still running)",
        })
    }

    /// stderr so far (for progress or diagnostics).
    pub fn stderr_so_far(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().expect("stderr lock")).into_owned()
    }
}

/// The write end of a command's stdin. `shutdown()` half-closes the connection, which the
/// daemon passes on as end of file.
pub type ExecInput = std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>;

impl DockerClient {
    /// Starts `cmd` in `container` with stdout and stderr attached (no TTY, no stdin).
    /// `env` entries are `NAME=value`: secrets go there, never into `cmd`.
    pub async fn exec(
        &self,
        container: &str,
        cmd: &[String],
        env: &[String],
        user: Option<&str>,
    ) -> Result<ExecStream, DockerError> {
        Ok(self.start(container, cmd, env, user, false).await?.0)
    }

    /// Like [`DockerClient::exec`], with stdin attached too: the caller writes the input and
    /// must read the output concurrently (a command blocked on a full stdout reads no input).
    pub async fn exec_with_stdin(
        &self,
        container: &str,
        cmd: &[String],
        env: &[String],
        user: Option<&str>,
    ) -> Result<(ExecStream, ExecInput), DockerError> {
        let (out, input) = self.start(container, cmd, env, user, true).await?;
        Ok((out, input.expect("stdin attached")))
    }

    /// Starts an exec, retried with backoff (0.5 s, 1 s, 2 s) when the daemon fails in a
    /// transient way before the command ran.
    async fn start(
        &self,
        container: &str,
        cmd: &[String],
        env: &[String],
        user: Option<&str>,
        stdin: bool,
    ) -> Result<(ExecStream, Option<ExecInput>), DockerError> {
        let mut delay = Duration::from_millis(500);
        for _ in 0..EXEC_RETRIES {
            match self.start_once(container, cmd, env, user, stdin).await {
                Err(e) if e.is_transient() => {
                    tracing::warn!(container, error = %e, retry_in = ?delay, "Starting a command in the container failed; retrying.");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                other => return other,
            }
        }
        self.start_once(container, cmd, env, user, stdin).await
    }

    async fn start_once(
        &self,
        container: &str,
        cmd: &[String],
        env: &[String],
        user: Option<&str>,
        stdin: bool,
    ) -> Result<(ExecStream, Option<ExecInput>), DockerError> {
        let config = bollard::models::ExecConfig {
            attach_stdin: Some(stdin),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(false),
            cmd: Some(cmd.to_vec()),
            env: (!env.is_empty()).then(|| env.to_vec()),
            user: user.map(String::from),
            ..Default::default()
        };
        let created = timed("create_exec", self.docker.create_exec(container, config)).await?;
        let started = timed(
            "start_exec",
            self.docker.start_exec(
                &created.id,
                Some(bollard::exec::StartExecOptions {
                    detach: false,
                    tty: false,
                    output_capacity: None,
                }),
            ),
        )
        .await?;
        match started {
            bollard::exec::StartExecResults::Attached { output, input } => Ok((
                ExecStream {
                    output,
                    pending: bytes::Bytes::new(),
                    stderr: Default::default(),
                    exec_id: created.id,
                    docker: self.docker.clone(),
                    ended: false,
                },
                stdin.then_some(input),
            )),
            bollard::exec::StartExecResults::Detached => Err(DockerError::Timeout {
                call: "start_exec (detached unexpectedly)",
            }),
        }
    }

    /// Runs `cmd` with `input` as its whole stdin (written while the output is read) and
    /// returns how it ended.
    pub async fn exec_feed(
        &self,
        container: &str,
        cmd: &[String],
        input: Vec<u8>,
        user: Option<&str>,
    ) -> Result<ExecExit, DockerError> {
        use tokio::io::AsyncWriteExt;
        let (out, mut stdin) = self.exec_with_stdin(container, cmd, &[], user).await?;
        let writer = tokio::spawn(async move {
            let written = stdin.write_all(&input).await;
            let _ = stdin.shutdown().await;
            written
        });
        let exit = out.finish().await?;
        match writer.await {
            Ok(Err(e)) if exit.code == 0 => Err(DockerError::Stream(format!(
                "writing the command's input failed: {e}"
            ))),
            _ => Ok(exit),
        }
    }

    /// Runs a short command and collects its whole output.
    pub async fn exec_capture(
        &self,
        container: &str,
        cmd: &[String],
        env: &[String],
        user: Option<&str>,
    ) -> Result<(ExecExit, String), DockerError> {
        use tokio::io::AsyncReadExt;
        let mut s = self.exec(container, cmd, env, user).await?;
        let mut out = String::new();
        if let Err(e) = s.read_to_string(&mut out).await {
            return Err(DockerError::Stream(e.to_string()));
        }
        let exit = s.finish().await?;
        Ok((exit, out))
    }
}

/// Retries of an exec that failed to start for a transient reason.
const EXEC_RETRIES: usize = 3;

/// Stopping Postgres may wait for a checkpoint: longer than a short call.
const STOP_TIMEOUT: Duration = Duration::from_secs(300);

/// Container and volume lifecycle, for physical restores.
impl DockerClient {
    /// Everything the engine knows about a container (config, host config, mounts, networks).
    pub async fn inspect_full(&self, id: &str) -> Result<Inspected, DockerError> {
        timed(
            "inspect_container",
            self.docker
                .inspect_container(id, None::<InspectContainerOptions>),
        )
        .await
        .map(Inspected)
    }

    /// The container this process runs in, if it runs in one: Docker sets the hostname to the container's short
    /// id; when the hostname was set by the user, the id in `/proc/self/mountinfo` (the
    /// container's own `/etc/hostname` bind mount) tells.
    pub async fn own_container(&self) -> Option<Inspected> {
        if let Some(host) = std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty())
            && let Ok(me) = self.inspect_full(&host).await
        {
            return Some(me);
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        let id = container_id_in_mountinfo(&mounts)?;
        self.inspect_full(id).await.ok()
    }

    /// The labels of a volume, or `None` when there is no such volume.
    pub async fn volume_labels(
        &self,
        name: &str,
    ) -> Result<Option<HashMap<String, String>>, DockerError> {
        match timed("inspect_volume", self.docker.inspect_volume(name)).await {
            Ok(v) => Ok(Some(v.labels)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Names of every volume.
    pub async fn volume_names(&self) -> Result<Vec<String>, DockerError> {
        let r = timed(
            "list_volumes",
            self.docker
                .list_volumes(None::<bollard::query_parameters::ListVolumesOptions>),
        )
        .await?;
        Ok(r.volumes
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.name)
            .collect())
    }

    pub async fn create_volume(
        &self,
        name: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), DockerError> {
        let req = bollard::models::VolumeCreateRequest {
            name: Some(name.to_string()),
            labels: Some(labels),
            ..Default::default()
        };
        timed("create_volume", self.docker.create_volume(req))
            .await
            .map(|_| ())
    }

    pub async fn remove_volume(&self, name: &str) -> Result<(), DockerError> {
        timed(
            "remove_volume",
            self.docker
                .remove_volume(name, None::<bollard::query_parameters::RemoveVolumeOptions>),
        )
        .await
    }

    /// Creates a container named `name` (no start).
    /// Creates the copy `copy` describes under `name` (not started; see [`Self::connect_networks`]).
    pub async fn create_copy(&self, name: &str, copy: &Copy) -> Result<String, DockerError> {
        self.create_container(name, copy.body.clone()).await
    }

    /// Connects a created copy to the networks beyond its primary one.
    pub async fn connect_networks(&self, id: &str, copy: &Copy) -> Result<(), DockerError> {
        for (network, endpoint) in &copy.networks {
            self.connect_network(network, id, endpoint.clone()).await?;
        }
        Ok(())
    }

    async fn create_container(
        &self,
        name: &str,
        body: bollard::models::ContainerCreateBody,
    ) -> Result<String, DockerError> {
        let opts = bollard::query_parameters::CreateContainerOptions {
            name: Some(name.to_string()),
            ..Default::default()
        };
        timed(
            "create_container",
            self.docker.create_container(Some(opts), body),
        )
        .await
        .map(|r| r.id)
    }

    async fn connect_network(
        &self,
        network: &str,
        container: &str,
        endpoint: bollard::models::EndpointSettings,
    ) -> Result<(), DockerError> {
        let req = bollard::models::NetworkConnectRequest {
            container: container.to_string(),
            endpoint_config: Some(endpoint),
        };
        timed("connect_network", self.docker.connect_network(network, req)).await
    }

    pub async fn start_container(&self, id: &str) -> Result<(), DockerError> {
        timed(
            "start_container",
            self.docker
                .start_container(id, None::<bollard::query_parameters::StartContainerOptions>),
        )
        .await
    }

    /// Stops a container with its own stop signal and grace period.
    pub async fn stop_container(&self, id: &str) -> Result<(), DockerError> {
        let stop = self
            .docker
            .stop_container(id, None::<bollard::query_parameters::StopContainerOptions>);
        match timed_for(STOP_TIMEOUT, "stop_container", stop).await {
            // 304: already stopped.
            Err(DockerError::Api {
                source:
                    bollard::errors::Error::DockerResponseServerError {
                        status_code: 304, ..
                    },
                ..
            }) => Ok(()),
            other => other,
        }
    }

    pub async fn rename_container(&self, id: &str, name: &str) -> Result<(), DockerError> {
        let opts = bollard::query_parameters::RenameContainerOptions {
            name: name.to_string(),
        };
        timed("rename_container", self.docker.rename_container(id, opts)).await
    }

    /// Removes a container (running or not); its volumes stay.
    pub async fn remove_container(&self, id: &str) -> Result<(), DockerError> {
        let opts = bollard::query_parameters::RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        timed(
            "remove_container",
            self.docker.remove_container(id, Some(opts)),
        )
        .await
    }

    /// The last `lines` lines a container logged (stdout and stderr), for error messages.
    pub async fn logs_tail(&self, id: &str, lines: usize) -> String {
        let opts = bollard::query_parameters::LogsOptions {
            stdout: true,
            stderr: true,
            tail: lines.to_string(),
            ..Default::default()
        };
        let mut out = String::new();
        let mut s = self.docker.logs(id, Some(opts));
        let read = async {
            while let Some(Ok(chunk)) = s.next().await {
                out.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
            }
        };
        let _ = tokio::time::timeout(CALL_TIMEOUT, read).await;
        out.trim().to_string()
    }

    /// Starts a short-lived helper from `image` as root with `mounts` (volume, path, read-only)
    /// that idles until removed; commands run in it through [`DockerClient::exec`].
    pub async fn start_helper(
        &self,
        image: &str,
        mounts: &[(&str, &str, bool)],
        labels: HashMap<String, String>,
    ) -> Result<String, DockerError> {
        let body = bollard::models::ContainerCreateBody {
            image: Some(image.to_string()),
            user: Some("0".into()),
            entrypoint: Some(vec![
                "/bin/sh".into(),
                "-c".into(),
                "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done".into(),
            ]),
            cmd: Some(vec![]),
            labels: Some(labels),
            host_config: Some(bollard::models::HostConfig {
                mounts: Some(
                    mounts
                        .iter()
                        .map(|(volume, path, ro)| bollard::models::Mount {
                            target: Some(path.to_string()),
                            source: Some(volume.to_string()),
                            typ: Some(bollard::models::MountType::VOLUME),
                            read_only: Some(*ro),
                            ..Default::default()
                        })
                        .collect(),
                ),
                network_mode: Some("none".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let id = timed(
            "create_container",
            self.docker.create_container(
                None::<bollard::query_parameters::CreateContainerOptions>,
                body,
            ),
        )
        .await?
        .id;
        if let Err(e) = self.start_container(&id).await {
            let _ = self.remove_container(&id).await;
            return Err(e);
        }
        Ok(id)
    }
}

#[cfg(test)]
mod tests;
