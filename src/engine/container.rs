//! A container's full configuration as Docker reports it, read through plain accessors, and the
//! request that creates its copy on another volume (physical restore). The bollard models stay
//! in here; callers see strings, maps and small structs.

use std::collections::HashMap;

use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, EndpointSettings, HealthStatusEnum, Mount,
    MountType, NetworkingConfig,
};

/// `docker inspect` of one container.
#[derive(Debug, Clone)]
pub struct Inspected(pub(crate) ContainerInspectResponse);

/// One mount of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    /// The path inside the container.
    pub destination: String,
    pub is_volume: bool,
    pub is_bind: bool,
    /// The volume's name (volumes only).
    pub name: Option<String>,
    /// The host path (binds) or the volume's directory.
    pub source: Option<String>,
}

/// The health check's verdict; `None` when the container has no health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    None,
    Starting,
    Healthy,
    Unhealthy,
}

/// Whether a container runs, and how it fares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunState {
    pub running: bool,
    pub restarting: bool,
    /// Restarts by its restart policy since it was created.
    pub restarts: i64,
    pub exit_code: i64,
    pub health: Health,
}

/// The create request for a copy of a container (see [`Inspected::copy_on_volume`]).
#[derive(Debug, Clone)]
pub struct Copy {
    pub(crate) body: ContainerCreateBody,
    /// Networks beyond the primary one, connected after creation.
    pub(crate) networks: Vec<(String, EndpointSettings)>,
}

impl Inspected {
    /// From `docker inspect`'s JSON (fixtures in tests, or a saved inspect).
    pub fn from_json(v: serde_json::Value) -> Result<Inspected, serde_json::Error> {
        serde_json::from_value(v).map(Inspected)
    }

    pub fn id(&self) -> &str {
        self.0.id.as_deref().unwrap_or_default()
    }

    /// The name without Docker's leading `/`.
    pub fn name(&self) -> String {
        self.0
            .name
            .as_deref()
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string()
    }

    pub fn labels(&self) -> HashMap<String, String> {
        self.0
            .config
            .as_ref()
            .and_then(|c| c.labels.clone())
            .unwrap_or_default()
    }

    pub fn env(&self) -> HashMap<String, String> {
        self.0
            .config
            .as_ref()
            .and_then(|c| c.env.as_ref())
            .map(|env| {
                env.iter()
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The image as configured (`postgres:17`).
    pub fn image(&self) -> String {
        self.0
            .config
            .as_ref()
            .and_then(|c| c.image.clone())
            .unwrap_or_default()
    }

    /// The image the container actually runs (`sha256:…`), whatever its tag points to now;
    /// the configured name when the engine does not say.
    pub fn image_id(&self) -> String {
        self.0.image.clone().unwrap_or_else(|| self.image())
    }

    pub fn mounts(&self) -> Vec<MountInfo> {
        self.0
            .mounts
            .iter()
            .flatten()
            .map(|m| MountInfo {
                destination: m.destination.clone().unwrap_or_default(),
                is_volume: m.typ.as_deref() == Some("volume"),
                is_bind: m.typ.as_deref() == Some("bind"),
                name: m.name.clone(),
                source: m.source.clone(),
            })
            .collect()
    }

    pub fn state(&self) -> RunState {
        let state = self.0.state.clone().unwrap_or_default();
        RunState {
            running: state.running == Some(true),
            restarting: state.restarting == Some(true),
            restarts: self.0.restart_count.unwrap_or(0),
            exit_code: state.exit_code.unwrap_or(-1),
            health: match state.health.and_then(|h| h.status) {
                Some(HealthStatusEnum::HEALTHY) => Health::Healthy,
                Some(HealthStatusEnum::UNHEALTHY) => Health::Unhealthy,
                Some(HealthStatusEnum::STARTING) => Health::Starting,
                _ => Health::None,
            },
        }
    }

    /// The request that creates a copy of this container with the volume mounted at `mount`
    /// replaced by `new_volume`: same image, environment, labels, health check, restart policy,
    /// networks and aliases; the engine gives it a new id, hostname and addresses.
    pub fn copy_on_volume(&self, mount: &str, new_volume: &str) -> Copy {
        recreate_body(&self.0, mount, new_volume)
    }
}

/// Builds the create request for a copy of `inspect`'s container with the volume mounted at
/// `mount` replaced by `new_volume`, with the networks to connect after creation. Pure.
fn recreate_body(inspect: &ContainerInspectResponse, mount: &str, new_volume: &str) -> Copy {
    let config = inspect.config.clone().unwrap_or_default();
    let mut host = inspect.host_config.clone().unwrap_or_default();
    let same = |a: &str| a.trim_end_matches('/') == mount.trim_end_matches('/');
    let mut replaced = false;
    if let Some(mounts) = host.mounts.as_mut() {
        for m in mounts.iter_mut() {
            if m.typ == Some(MountType::VOLUME) && m.target.as_deref().is_some_and(same) {
                m.source = Some(new_volume.to_string());
                replaced = true;
            }
        }
    }
    if let Some(binds) = host.binds.as_mut() {
        for b in binds.iter_mut() {
            let parts: Vec<&str> = b.splitn(3, ':').collect();
            if parts.len() >= 2 && same(parts[1]) {
                let mut new = vec![new_volume, parts[1]];
                new.extend(parts.get(2));
                *b = new.join(":");
                replaced = true;
            }
        }
    }
    if !replaced {
        // The volume came from the image's VOLUME or an anonymous mount: name it explicitly.
        host.mounts.get_or_insert_with(Vec::new).push(Mount {
            target: Some(mount.to_string()),
            source: Some(new_volume.to_string()),
            typ: Some(MountType::VOLUME),
            ..Default::default()
        });
    }
    let short_id: String = inspect
        .id
        .clone()
        .unwrap_or_default()
        .chars()
        .take(12)
        .collect();
    let clean = |e: &EndpointSettings| EndpointSettings {
        ipam_config: e.ipam_config.clone(),
        links: e.links.clone(),
        aliases: e
            .aliases
            .as_ref()
            .map(|a| a.iter().filter(|x| **x != short_id).cloned().collect()),
        driver_opts: e.driver_opts.clone(),
        ..Default::default()
    };
    let networks = inspect
        .network_settings
        .as_ref()
        .and_then(|n| n.networks.clone())
        .unwrap_or_default();
    let primary = host.network_mode.clone().unwrap_or_default();
    let mut endpoints = HashMap::new();
    let mut others = Vec::new();
    let mut names: Vec<&String> = networks.keys().collect();
    names.sort();
    for name in names {
        let e = clean(&networks[name]);
        if *name == primary {
            endpoints.insert(name.clone(), e);
        } else {
            others.push((name.clone(), e));
        }
    }
    // The engine picked the hostname from the old id: let it pick a new one.
    let hostname = config.hostname.clone().filter(|h| *h != short_id);
    let body = ContainerCreateBody {
        hostname,
        domainname: config.domainname,
        user: config.user,
        attach_stdin: config.attach_stdin,
        attach_stdout: config.attach_stdout,
        attach_stderr: config.attach_stderr,
        exposed_ports: config.exposed_ports,
        tty: config.tty,
        open_stdin: config.open_stdin,
        stdin_once: config.stdin_once,
        env: config.env,
        cmd: config.cmd,
        healthcheck: config.healthcheck,
        args_escaped: config.args_escaped,
        image: config.image,
        volumes: config.volumes,
        working_dir: config.working_dir,
        entrypoint: config.entrypoint,
        network_disabled: config.network_disabled,
        on_build: config.on_build,
        labels: config.labels,
        stop_signal: config.stop_signal,
        stop_timeout: config.stop_timeout,
        shell: config.shell,
        host_config: Some(host),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(endpoints),
        }),
    };
    Copy {
        body,
        networks: others,
    }
}

/// A compose service's container as `docker inspect` shows it, for tests.
#[cfg(test)]
pub(crate) fn fixture_json() -> serde_json::Value {
    serde_json::json!({
        "Id": "0123456789abcdef0123456789abcdef",
        "Name": "/shop-db-1",
        "State": {"Running": true, "Status": "running"},
        "Config": {
            "Hostname": "0123456789ab",
            "Image": "postgres:17",
            "Env": ["POSTGRES_USER=app", "POSTGRES_DB=shop", "PGDATA=/var/lib/postgresql/data"],
            "Labels": {
                "com.docker.compose.project": "shop",
                "com.docker.compose.service": "db",
                "com.docker.compose.project.config_files": "/srv/shop/compose.yaml,/srv/shop/compose.prod.yaml"
            },
            "Healthcheck": {"Test": ["CMD-SHELL", "pg_isready"]}
        },
        "HostConfig": {
            "NetworkMode": "shop_default",
            "RestartPolicy": {"Name": "unless-stopped"},
            "Mounts": [
                {"Type": "volume", "Source": "shop_db-data", "Target": "/var/lib/postgresql/data"},
                {"Type": "bind", "Source": "/srv/shop/init", "Target": "/docker-entrypoint-initdb.d", "ReadOnly": true}
            ]
        },
        "Mounts": [
            {"Type": "volume", "Name": "shop_db-data", "Source": "/var/lib/docker/volumes/shop_db-data/_data", "Destination": "/var/lib/postgresql/data", "RW": true},
            {"Type": "bind", "Source": "/srv/shop/init", "Destination": "/docker-entrypoint-initdb.d", "RW": false}
        ],
        "NetworkSettings": {"Networks": {
            "shop_default": {"Aliases": ["shop-db-1", "db", "0123456789ab"], "IPAddress": "172.18.0.2", "EndpointID": "e1"},
            "shop_backend": {"Aliases": ["db"], "IPAddress": "172.19.0.2"}
        }}
    })
}

#[cfg(test)]
mod tests;

/// A throwaway server for a restore drill ([`crate::engine::docker::DockerClient::start_sandbox`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    pub image: String,
    /// `NAME=value`.
    pub env: Vec<String>,
    pub labels: HashMap<String, String>,
    pub memory_bytes: i64,
    /// CPUs × 10⁹.
    pub nano_cpus: i64,
    /// Instead of the image's entrypoint (and with no command).
    pub entrypoint: Option<Vec<String>>,
}
