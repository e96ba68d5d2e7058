//! The service a physical restore switches: facts read off its container, and what a probe
//! inside it reports (major version, free space). Pure.

use super::*;

/// The service a physical backup is restored into, as its container shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub container_id: String,
    pub container_name: String,
    pub project: String,
    pub service: String,
    /// The image reference the container was created from.
    pub image: String,
    pub running: bool,
    /// `PGDATA` (the data directory).
    pub data_dir: String,
    /// Where the volume holding it is mounted.
    pub mount: String,
    pub volume: String,
    /// Compose files, as labelled (host paths).
    pub config_files: Vec<PathBuf>,
    /// For the check query and `--post-sql`.
    pub user: String,
    pub database: String,
}

/// Reads the facts a restore needs off a container's inspect output.
pub fn service_of(inspect: &Inspected, fallback_data_dir: &str) -> Result<Service, RestoreError> {
    let name = inspect.name();
    let labels = inspect.labels();
    let (Some(project), Some(service)) = (
        labels.get("com.docker.compose.project"),
        labels.get("com.docker.compose.service"),
    ) else {
        return Err(RestoreError::Refused(format!(
            "container {name} is not part of a compose project (no com.docker.compose.* labels): a physical restore switches a compose service onto a new volume"
        )));
    };
    let env = inspect.env();
    let data_dir = env
        .get("PGDATA")
        .cloned()
        .unwrap_or_else(|| fallback_data_dir.to_string());
    // The mount holding the data directory: the deepest one that contains it.
    let mounts = inspect.mounts();
    let mount = mounts
        .iter()
        .filter(|m| {
            let d = m.destination.trim_end_matches('/');
            data_dir == d || data_dir.starts_with(&format!("{d}/"))
        })
        .max_by_key(|m| m.destination.len());
    let Some(mount) = mount else {
        return Err(RestoreError::Refused(format!(
            "the data directory {data_dir} of {name} is not on a volume: there is nothing to switch; give the service a named volume for it"
        )));
    };
    let volume = mount.name.clone().filter(|_| mount.is_volume).ok_or_else(|| {
        RestoreError::Refused(format!(
            "the data directory {data_dir} of {name} is a bind mount of {}: a physical restore switches named volumes only",
            mount.source.as_deref().unwrap_or("?")
        ))
    })?;
    let config_files = labels
        .get("com.docker.compose.project.config_files")
        .map(|s| {
            s.split(',')
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
                .collect()
        })
        .unwrap_or_default();
    let running = inspect.state().running;
    Ok(Service {
        container_id: inspect.id().to_string(),
        container_name: name,
        project: project.clone(),
        service: service.clone(),
        image: inspect.image(),
        running,
        data_dir,
        mount: mount.destination.clone(),
        volume,
        config_files,
        user: env
            .get("POSTGRES_USER")
            .cloned()
            .unwrap_or_else(|| "postgres".into()),
        database: env
            .get("POSTGRES_DB")
            .or(env.get("POSTGRES_USER"))
            .cloned()
            .unwrap_or_else(|| "postgres".into()),
    })
}

/// What the helper found out about the service's image and disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// Postgres major of the service's image.
    pub major: u32,
    /// Free bytes on the filesystem that holds the volumes.
    pub available: u64,
    /// Bytes the current data directory uses (`--in-place` only).
    pub used: u64,
}

/// The probe script: `postgres --version`, `df -Pk` of the mount, and (in place) `du -sk`.
pub(super) fn probe_script(in_place: bool) -> String {
    format!(
        "v=$(postgres --version 2>/dev/null || ls /usr/lib/postgresql 2>/dev/null | sort -n | tail -n 1); echo \"version $v\"; df -Pk \"$1\" | tail -n 1 | awk '{{print \"avail \" $4}}'; {}",
        if in_place {
            "du -sk \"$1\" | awk '{print \"used \" $1}'"
        } else {
            "echo 'used 0'"
        }
    )
}

pub fn parse_probe(out: &str) -> Result<Probe, String> {
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ').map(str::trim))
    };
    let version = field("version").unwrap_or_default();
    // `ls /usr/lib/postgresql` prints the bare major.
    let bare = version.parse::<u32>().ok().filter(|n| *n < 1000);
    let major = bare.or_else(|| pg::major_of(version)).ok_or_else(|| {
        format!("cannot tell the Postgres version of the service's image (it printed {version:?})")
    })?;
    let kib = |name: &str| {
        field(name)
            .and_then(|v| v.parse::<u64>().ok())
            .map(|k| k * 1024)
            .ok_or_else(|| format!("cannot read the free space (the probe printed {out:?})"))
    };
    Ok(Probe {
        major,
        available: kib("avail")?,
        used: kib("used")?,
    })
}
