//! Container and volume lifecycle, for physical restores and restore drills: inspect, create a
//! copy, stop, rename, start, remove, volumes, helper and sandbox containers, logs.

use super::*;

/// Retries of an exec that failed to start for a transient reason.
pub(super) const EXEC_RETRIES: usize = 3;

/// Stopping Postgres may wait for a checkpoint: longer than a short call.
pub(super) const STOP_TIMEOUT: Duration = Duration::from_secs(300);

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

    pub(super) async fn create_container(
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

    pub(super) async fn connect_network(
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

    /// Removes a container (running or not) with its anonymous volumes: a throwaway server's
    /// data goes with it.
    pub async fn remove_with_volumes(&self, id: &str) -> Result<(), DockerError> {
        let opts = bollard::query_parameters::RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        match timed(
            "remove_container",
            self.docker.remove_container(id, Some(opts)),
        )
        .await
        {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        }
    }

    /// Ids of every container, running or not and whatever the scope, carrying `label`
    /// (`name=value`): the sidecar's own throwaway containers.
    pub async fn ids_labelled(&self, label: &str) -> Result<Vec<String>, DockerError> {
        let opts = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([(
                "label".to_string(),
                vec![label.to_string()],
            )])),
            ..Default::default()
        };
        let summaries = timed("list_containers", self.docker.list_containers(Some(opts))).await?;
        Ok(summaries.into_iter().filter_map(|s| s.id).collect())
    }

    /// Creates and starts a throwaway Postgres server from `s`: on no network (no published
    /// port, nothing else can reach it), within its memory and CPU limits, its data in the
    /// container (removed by [`Self::remove_with_volumes`]).
    pub async fn start_sandbox(&self, name: &str, s: &Sandbox) -> Result<String, DockerError> {
        let body = bollard::models::ContainerCreateBody {
            image: Some(s.image.clone()),
            env: Some(s.env.clone()),
            cmd: s.entrypoint.as_ref().map(|_| vec![]),
            entrypoint: s.entrypoint.clone(),
            labels: Some(s.labels.clone()),
            host_config: Some(bollard::models::HostConfig {
                network_mode: Some("none".into()),
                memory: Some(s.memory_bytes),
                nano_cpus: Some(s.nano_cpus),
                ..Default::default()
            }),
            ..Default::default()
        };
        let id = self.create_container(name, body).await?;
        if let Err(e) = self.start_container(&id).await {
            let _ = self.remove_with_volumes(&id).await;
            return Err(e);
        }
        Ok(id)
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
