//! Physical restore (README "Physical restore"): a base backup unpacked into a NEW named volume, the service's
//! container recreated on it, and the compose file's volume reference rewritten — the old
//! volume is never touched.
//!
//! Order of work, so that a failure at any step leaves the service on its old data:
//! 1. preflight (no change): backup committed and physical, same Postgres major as the
//!    service's image, enough free space, compose file reachable and editable;
//! 2. new volume, filled by a helper container from the service's own image while the service
//!    keeps running; the stream is checked against the manifest's size and SHA-256 before the
//!    service is touched;
//! 3. stop the service, rename its container aside, create a new one with the same
//!    configuration on the new volume, start it, wait until healthy and until it answers as the
//!    backed-up cluster (system identifier), run `--post-sql` scripts;
//! 4. rewrite the compose file (atomic, `.bak` kept), remove the old container. The old volume
//!    stays, and its name is printed.
//!
//! Any failure in 2–4 (or Ctrl-C) undoes what was done: the new container goes, the old one
//! gets its name back and is started, the new volume is removed, the compose file is restored.
//! `--in-place` is the exception the user confirms with `--yes`: the current volume is wiped and
//! refilled (verification happens before the wipe, by reading the backup once).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::AsyncWriteExt;

use crate::app::table::human_bytes;
use crate::engine::container::{Health, Inspected};
use crate::engine::docker::{DockerClient, ExecInput};
use crate::engine::pg::{self, Access};
use crate::model::layout::Kind;
use crate::model::manifest::{Manifest, Object, ObjectKind};
use crate::pipeline::fetch;
use crate::restore::{ChunkSink, Progress, RestoreError};
use crate::store::Store;
use compose::Edit;

/// How long the restored server may take to become healthy and answer.
const READY_TIMEOUT: Duration = Duration::from_secs(600);
/// Headroom over the unpacked size: WAL written during recovery, filesystem overhead.
const SPACE_MARGIN: u64 = 256 * 1024 * 1024;
/// Labels of the helper containers (never `com.docker.compose.*`: they are not the project's).
const HELPER_LABEL: &str = "pgbackup.helper";

/// The physical restore options (as in pg_backctl).
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Overwrite the current volume instead of creating a new one (requires `yes`).
    pub in_place: bool,
    pub yes: bool,
    /// Start the restored server as a standby (`standby.signal`).
    pub standby: bool,
    /// Replaces `postgresql.auto.conf` in the restored data directory.
    pub auto_conf: Option<PathBuf>,
    /// `*.sql` files run in name order once the restored server answers.
    pub post_sql: Option<PathBuf>,
}

/// Files the options name, read before anything starts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inputs {
    pub auto_conf: Option<Vec<u8>>,
    pub scripts: Vec<(String, Vec<u8>)>,
}

/// Misused options, before anything is looked at.
pub fn check_options(o: &Options) -> Result<(), RestoreError> {
    let usage = |m: &str| Err(RestoreError::Usage(m.to_string()));
    if o.in_place && !o.yes {
        return usage(
            "--in-place deletes the data in the service's current volume before restoring: add --yes to confirm, or leave out --in-place to restore into a new volume (recommended; the old one is kept)",
        );
    }
    if o.yes && !o.in_place {
        return usage(
            "--yes only confirms --in-place; a restore into a new volume needs no confirmation",
        );
    }
    if o.in_place && o.standby {
        return usage(
            "--standby cannot be combined with --in-place: a standby built over the service's only copy of its data loses the primary; restore the standby into a new volume (drop --in-place)",
        );
    }
    if o.standby && o.post_sql.is_some() {
        return usage(
            "--post-sql needs a writable server but --standby starts a read-only one: run the scripts on the primary",
        );
    }
    Ok(())
}

/// Reads `--auto-conf` and `--post-sql`. Paths are as this process sees them (inside the
/// sidecar: a mounted path).
pub fn load_inputs(o: &Options) -> Result<Inputs, RestoreError> {
    let mut inputs = Inputs::default();
    if let Some(path) = &o.auto_conf {
        let bytes = std::fs::read(path).map_err(|e| {
            RestoreError::Usage(format!(
                "--auto-conf {}: {e}; pass a postgresql.auto.conf file pgctl can read (in the sidecar: a path under a mounted directory)",
                path.display()
            ))
        })?;
        inputs.auto_conf = Some(bytes);
    }
    if let Some(dir) = &o.post_sql {
        let entries = std::fs::read_dir(dir).map_err(|e| {
            RestoreError::Usage(format!(
                "--post-sql {}: {e}; pass a directory of *.sql files pgctl can read",
                dir.display()
            ))
        })?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "sql"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(RestoreError::Usage(format!(
                "--post-sql {} holds no *.sql files",
                dir.display()
            )));
        }
        for f in files {
            let bytes = std::fs::read(&f).map_err(|e| {
                RestoreError::Usage(format!("--post-sql: cannot read {}: {e}", f.display()))
            })?;
            let name = f
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            inputs.scripts.push((name, bytes));
        }
    }
    Ok(inputs)
}

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
fn probe_script(in_place: bool) -> String {
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

/// A physical restore, decided and printable; nothing has happened yet.
#[derive(Debug, Clone)]
pub struct Plan {
    pub manifest: Manifest,
    pub object: Object,
    pub service: Service,
    pub probe: Probe,
    pub needed: u64,
    /// `None` with `--in-place`.
    pub new_volume: Option<String>,
    pub volume_labels: HashMap<String, String>,
    pub edit: Option<Edit>,
    pub options: Options,
    pub inputs: Inputs,
}

fn require_physical(m: &Manifest) -> Result<(), RestoreError> {
    if m.kind == Kind::Physical {
        return Ok(());
    }
    Err(RestoreError::Usage(format!(
        "{}/{} is a logical backup: restore it without --physical",
        m.target, m.backup_id
    )))
}

/// Decides the restore from what was found. Pure: every refusal is here.
#[allow(clippy::too_many_arguments)]
pub fn decide(
    manifest: Manifest,
    service: Service,
    probe: Probe,
    edit: Result<Option<Edit>, String>,
    old_volume_labels: &HashMap<String, String>,
    options: Options,
    inputs: Inputs,
) -> Result<Plan, RestoreError> {
    require_physical(&manifest)?;
    let id = format!("{}/{}", manifest.target, manifest.backup_id);
    let object = manifest
        .objects
        .iter()
        .find(|o| o.kind == ObjectKind::Base)
        .cloned()
        .ok_or_else(|| RestoreError::Failed(format!("{id} has no base object in its manifest")))?;
    if manifest.postgres.major != probe.major {
        return Err(RestoreError::Refused(format!(
            "{id} is a Postgres {} cluster but {}/{} runs Postgres {} ({}): a physical backup only starts on the same major version. Restore it into a service running Postgres {}, or restore a logical backup (pgctl restore … without --physical)",
            manifest.postgres.major,
            service.project,
            service.service,
            probe.major,
            service.image,
            manifest.postgres.major
        )));
    }
    let unpacked = object.raw_size;
    let needed = unpacked + SPACE_MARGIN.max(unpacked / 10);
    let available = if options.in_place {
        probe.available + probe.used
    } else {
        probe.available
    };
    if available < needed {
        return Err(RestoreError::Refused(format!(
            "not enough space: the restore needs about {} ({} unpacked plus headroom) but {} is free where the volumes live; free some space first",
            human_bytes(needed),
            human_bytes(unpacked),
            human_bytes(available)
        )));
    }
    let edit = edit.map_err(RestoreError::Refused)?;
    let (new_volume, volume_labels) = match &edit {
        Some(e) if !options.in_place => {
            let mut labels = HashMap::new();
            // Compose adopts the volume as its own: same project, the new key.
            labels.insert(
                "com.docker.compose.project".to_string(),
                service.project.clone(),
            );
            labels.insert("com.docker.compose.volume".to_string(), e.new_key.clone());
            if let Some(v) = old_volume_labels.get("com.docker.compose.version") {
                labels.insert("com.docker.compose.version".to_string(), v.clone());
            }
            labels.insert(
                "pgbackup.restored-from".to_string(),
                manifest.prefix.clone(),
            );
            labels.insert("pgbackup.replaces".to_string(), service.volume.clone());
            (Some(format!("{}_{}", service.project, e.new_key)), labels)
        }
        _ => (None, HashMap::new()),
    };
    Ok(Plan {
        manifest,
        object,
        service,
        probe,
        needed,
        new_volume,
        volume_labels,
        edit,
        options,
        inputs,
    })
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.manifest;
        let s = &self.service;
        let sysid = m
            .physical
            .as_ref()
            .map(|p| p.system_identifier.as_str())
            .unwrap_or("?");
        writeln!(f, "Physical restore (whole cluster)")?;
        writeln!(
            f,
            "  backup:   {} {} (Postgres {}, system {sysid}, {} stored, {} unpacked)",
            m.target,
            m.backup_id,
            m.postgres.major,
            human_bytes(self.object.size),
            human_bytes(self.object.raw_size)
        )?;
        writeln!(
            f,
            "  service:  {}/{} (container {}, image {}, Postgres {}, {})",
            s.project,
            s.service,
            s.container_name,
            s.image,
            self.probe.major,
            if s.running { "running" } else { "stopped" }
        )?;
        writeln!(f, "  data:     {} on volume {}", s.data_dir, s.volume)?;
        writeln!(
            f,
            "  space:    {} needed, {} free",
            human_bytes(self.needed),
            human_bytes(self.probe.available)
        )?;
        match (&self.new_volume, &self.edit) {
            (Some(v), Some(e)) => {
                writeln!(
                    f,
                    "  into:     new volume {v} (volume {} is kept)",
                    s.volume
                )?;
                writeln!(
                    f,
                    "  compose:  {} (previous version kept as {}.bak):",
                    e.file.display(),
                    e.file.display()
                )?;
                write!(f, "{}", e.diff())?;
            }
            _ => writeln!(
                f,
                "  into:     volume {} IN PLACE: its current data is deleted first",
                s.volume
            )?,
        }
        let o = &self.options;
        if o.standby {
            writeln!(f, "  standby:  starts as a standby (standby.signal)")?;
        }
        if let Some(p) = &o.auto_conf {
            writeln!(
                f,
                "  config:   postgresql.auto.conf replaced by {}",
                p.display()
            )?;
        }
        if !self.inputs.scripts.is_empty() {
            let names: Vec<&str> = self
                .inputs
                .scripts
                .iter()
                .map(|(n, _)| n.as_str())
                .collect();
            writeln!(
                f,
                "  post-sql: {} (as {} on {})",
                names.join(", "),
                s.user,
                s.database
            )?;
        }
        writeln!(f, "  steps:")?;
        let mut steps: Vec<String> = Vec::new();
        if self.new_volume.is_some() {
            steps.push("create the new volume and unpack the backup into it with a helper from the service's image, checking size and SHA-256 (the service keeps running)".into());
            steps.push(format!(
                "stop {} and recreate it on the new volume with the same configuration",
                s.container_name
            ));
        } else {
            steps.push("read the whole backup once to check its size and SHA-256".into());
            steps.push(format!(
                "stop {}, delete the volume's contents and unpack the backup into it",
                s.container_name
            ));
        }
        steps.push(
            "start it, wait until healthy and until it answers as the backed-up cluster".into(),
        );
        if !self.inputs.scripts.is_empty() {
            steps.push("run the post-restore SQL scripts".into());
        }
        if self.new_volume.is_some() {
            steps.push("rewrite the compose file's volume reference, then remove the old (stopped) container".into());
        }
        for (i, step) in steps.iter().enumerate() {
            writeln!(f, "    {}. {step}", i + 1)?;
        }
        Ok(())
    }
}

/// What a finished physical restore did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    pub backup_id: String,
    pub source: String,
    pub service: String,
    pub container: String,
    pub volume: String,
    /// The volume the service used before (kept), unless restored in place.
    pub previous_volume: Option<String>,
    pub compose_file: Option<String>,
    pub compose_backup: Option<String>,
    pub in_place: bool,
    pub standby: bool,
    pub scripts: Vec<String>,
    pub bytes: u64,
    pub duration_seconds: f64,
}

/// The sidecar's own bind mounts (host source → path here), to reach compose files.
async fn own_mounts(docker: &DockerClient) -> Vec<(PathBuf, PathBuf)> {
    let Some(me) = docker.own_container().await else {
        return Vec::new();
    };
    me.mounts()
        .into_iter()
        .filter(|m| m.is_bind)
        .filter_map(|m| Some((PathBuf::from(m.source?), PathBuf::from(m.destination))))
        .collect()
}

/// Reads the service's compose files and plans the volume edit.
async fn plan_compose(docker: &DockerClient, s: &Service, stamp: &str) -> Result<Edit, String> {
    if s.config_files.is_empty() {
        return Err(format!(
            "{}/{} has no com.docker.compose.project.config_files label: cannot find its compose file",
            s.project, s.service
        ));
    }
    let mounts = own_mounts(docker).await;
    let mut files = Vec::new();
    for f in &s.config_files {
        let local = compose::local_path(f, &mounts, |p| p.is_file()).ok_or_else(|| {
            format!(
                "the compose file {} is not reachable here: mount the project directory into the backup service (volumes: - .:{}), then run the restore again",
                f.display(),
                f.parent().unwrap_or(Path::new("/")).display()
            )
        })?;
        let text = std::fs::read_to_string(&local)
            .map_err(|e| format!("cannot read {}: {e}", local.display()))?;
        let dir = local.parent().unwrap_or(Path::new("."));
        let writable = tempfile_probe(dir);
        if let Err(e) = writable {
            return Err(format!(
                "cannot write next to {} ({e}): the project directory must be mounted read-write",
                f.display()
            ));
        }
        files.push((f.clone(), local, text));
    }
    let existing = docker.volume_names().await.map_err(|e| e.to_string())?;
    let project = s.project.clone();
    compose::plan_edit(&files, &s.service, &s.mount, |old, taken| {
        let mut taken = taken.to_vec();
        loop {
            let k = compose::restored_key(old, stamp, &taken);
            if existing.contains(&format!("{project}_{k}")) {
                taken.push(k);
            } else {
                return k;
            }
        }
    })
}

fn tempfile_probe(dir: &Path) -> std::io::Result<()> {
    let p = dir.join(format!(".pgbackup-write-test-{}", std::process::id()));
    std::fs::write(&p, b"")?;
    std::fs::remove_file(&p)
}

fn helper_labels(s: &Service) -> HashMap<String, String> {
    HashMap::from([
        (HELPER_LABEL.to_string(), "physical-restore".to_string()),
        ("pgbackup.helper.for".to_string(), s.container_name.clone()),
    ])
}

/// `sh -c script` with `$1` = `arg` (never interpolated into the script).
fn sh(script: &str, arg: &str) -> Vec<String> {
    ["sh", "-c", script, "sh", arg]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// Runs `script` (with `$1` = `arg`) as root in a helper and returns its stdout.
async fn helper_sh(
    docker: &DockerClient,
    helper: &str,
    script: &str,
    arg: &str,
) -> Result<String, RestoreError> {
    let (exit, out) = docker
        .exec_capture(helper, &sh(script, arg), &[], Some("0"))
        .await?;
    if exit.code != 0 {
        return Err(RestoreError::Failed(format!(
            "the helper failed (exit {}): {}",
            exit.code, exit.stderr
        )));
    }
    Ok(out)
}

/// Finds the service and the backup's facts, then decides. Changes nothing (a probe helper
/// runs and is removed).
pub async fn prepare(
    docker: &DockerClient,
    manifest: Manifest,
    to: Option<&str>,
    options: Options,
) -> Result<Plan, RestoreError> {
    check_options(&options)?;
    let inputs = load_inputs(&options)?;
    // Before the probe helper: a logical backup needs none of it.
    require_physical(&manifest)?;
    let name = to.unwrap_or(&manifest.target).to_string();
    let prefer = manifest.target.split_once('/').map(|(p, _)| p.to_string());
    let c = crate::restore::find_container(docker, &name, prefer.as_deref()).await?;
    crate::restore::ensure_postgres(&c)?;
    let inspect = docker.inspect_full(&c.id).await?;
    let fallback = manifest
        .physical
        .as_ref()
        .map(|p| p.data_directory.clone())
        .unwrap_or_else(|| "/var/lib/postgresql/data".into());
    let service = service_of(&inspect, &fallback)?;
    let probe = {
        let helper = docker
            .start_helper(
                &service.image,
                &[(&service.volume, &service.mount, true)],
                helper_labels(&service),
            )
            .await?;
        let out = helper_sh(
            docker,
            &helper,
            &probe_script(options.in_place),
            &service.mount,
        )
        .await;
        let _ = docker.remove_container(&helper).await;
        parse_probe(&out?).map_err(RestoreError::Failed)?
    };
    let stamp = manifest
        .backup_id
        .to_string()
        .split('-')
        .next()
        .unwrap_or_default()
        .to_lowercase();
    let edit = if options.in_place {
        Ok(None)
    } else {
        plan_compose(docker, &service, &stamp).await.map(Some)
    };
    let old_labels = docker
        .volume_labels(&service.volume)
        .await?
        .unwrap_or_default();
    decide(manifest, service, probe, edit, &old_labels, options, inputs)
}

/// Stdin of a command in a container as a [`ChunkSink`].
struct ExecSink(ExecInput);

impl ChunkSink for ExecSink {
    async fn send(&mut self, chunk: Bytes) -> std::io::Result<()> {
        self.0.write_all(&chunk).await
    }
}

/// Unpacks the backup into `dir` inside `helper` (a fresh directory or one just emptied), with
/// the image's postgres user as owner, and writes the option files.
async fn unpack(
    docker: &DockerClient,
    store: &dyn Store,
    plan: &Plan,
    helper: &str,
    progress: &dyn Progress,
) -> Result<(), RestoreError> {
    let dir = &plan.service.data_dir;
    let tar = sh("set -e; mkdir -p \"$1\"; cd \"$1\"; tar -x -f -", dir);
    let (out, input) = docker.exec_with_stdin(helper, &tar, &[], Some("0")).await?;
    let mut sink = ExecSink(input);
    let streamed = crate::restore::stream_object(
        store,
        &plan.manifest,
        &plan.object,
        "tar",
        &mut sink,
        progress,
    )
    .await;
    let _ = sink.0.shutdown().await;
    drop(sink);
    let exit = out.finish().await?;
    streamed?;
    if exit.code != 0 {
        return Err(RestoreError::Failed(format!(
            "unpacking failed (tar exit {}): {}",
            exit.code, exit.stderr
        )));
    }
    if let Some(conf) = &plan.inputs.auto_conf {
        let cmd = sh("cat > \"$1/postgresql.auto.conf\"", dir);
        let exit = docker
            .exec_feed(helper, &cmd, conf.clone(), Some("0"))
            .await?;
        if exit.code != 0 {
            return Err(RestoreError::Failed(format!(
                "writing postgresql.auto.conf failed: {}",
                exit.stderr
            )));
        }
    }
    let standby = if plan.options.standby {
        "touch \"$1/standby.signal\"; "
    } else {
        "rm -f \"$1/standby.signal\"; "
    };
    let finish = format!(
        "set -e; test -f \"$1/PG_VERSION\" && test -f \"$1/global/pg_control\" || {{ echo 'the unpacked backup has no PG_VERSION or global/pg_control' >&2; exit 1; }}; rm -f \"$1/postmaster.pid\"; {standby}chown -R postgres:postgres \"$1\"; chmod 0700 \"$1\"; cat \"$1/PG_VERSION\""
    );
    let version = helper_sh(docker, helper, &finish, dir).await?;
    let major = version.trim().parse::<u32>().ok();
    if major != Some(plan.manifest.postgres.major) {
        return Err(RestoreError::Failed(format!(
            "the unpacked data directory says PG_VERSION {:?}, the manifest says {}",
            version.trim(),
            plan.manifest.postgres.major
        )));
    }
    Ok(())
}

/// Waits until the container runs, is healthy (when it has a health check) and answers as the
/// backed-up cluster: same system identifier, recovery state as asked.
async fn wait_ready(docker: &DockerClient, id: &str, plan: &Plan) -> Result<(), RestoreError> {
    let access = Access::Exec {
        docker: docker.clone(),
        container: id.to_string(),
        user: plan.service.user.clone(),
    };
    let want = plan
        .manifest
        .physical
        .as_ref()
        .map(|p| p.system_identifier.clone())
        .unwrap_or_default();
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut last;
    loop {
        let state = docker.inspect_full(id).await?.state();
        // A restart policy would bring a failing server back again and again: once is enough.
        if !state.running || state.restarting || state.restarts > 0 {
            let logs = docker.logs_tail(id, 15).await;
            return Err(RestoreError::Failed(format!(
                "the restored server stopped (exit code {}); its last log lines:\n{logs}",
                state.exit_code
            )));
        }
        if state.health == Health::Unhealthy {
            let logs = docker.logs_tail(id, 15).await;
            return Err(RestoreError::Failed(format!(
                "the restored server is unhealthy; its last log lines:\n{logs}"
            )));
        }
        if matches!(state.health, Health::None | Health::Healthy) {
            match access
                .query(
                    "postgres",
                    "SELECT (SELECT system_identifier FROM pg_control_system())::text || '|' || pg_is_in_recovery()::text",
                )
                .await
            {
                Ok(rows) => {
                    let row = rows.first().cloned().unwrap_or_default();
                    let (sysid, recovery) = row.split_once('|').unwrap_or((&row, ""));
                    if !want.is_empty() && sysid != want {
                        return Err(RestoreError::Failed(format!(
                            "the restored server is cluster {sysid}, the backup is of cluster {want}"
                        )));
                    }
                    let in_recovery = recovery == "true";
                    if in_recovery == plan.options.standby {
                        return Ok(());
                    }
                    last = format!("still in recovery: {recovery}");
                }
                Err(e) => last = e.to_string(),
            }
        } else {
            last = "health check: starting".into();
        }
        if Instant::now() > deadline {
            return Err(RestoreError::Failed(format!(
                "the restored server was not ready within {READY_TIMEOUT:?} ({last})"
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Runs the `--post-sql` scripts in order, each with `ON_ERROR_STOP`.
async fn post_sql(docker: &DockerClient, id: &str, plan: &Plan) -> Result<(), RestoreError> {
    for (name, sql) in &plan.inputs.scripts {
        let cmd: Vec<String> = [
            "psql",
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-U",
            &plan.service.user,
            "-d",
            &plan.service.database,
            "-f",
            "-",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let exit = docker.exec_feed(id, &cmd, sql.clone(), None).await?;
        if exit.code != 0 {
            return Err(RestoreError::Failed(format!(
                "post-restore script {name} failed (psql exit {}): {}",
                exit.code, exit.stderr
            )));
        }
        tracing::info!(script = %name, "Post-restore script ran.");
    }
    Ok(())
}

/// What has been changed so far, to undo it.
#[derive(Default)]
struct Undo {
    volume_created: Option<String>,
    old_renamed_to: Option<String>,
    old_stopped: bool,
    new_container: Option<String>,
    compose_written: bool,
    /// In place: the old data is gone, there is nothing to go back to.
    wiped: bool,
    /// The switch's journal, removed once the rollback is done.
    journal: Option<PathBuf>,
}

/// Runs the plan; on failure or interruption puts the service back as it was.
pub async fn execute(
    docker: &DockerClient,
    store: &dyn Store,
    plan: &Plan,
    progress: &dyn Progress,
) -> Result<Outcome, RestoreError> {
    let started = Instant::now();
    let mut undo = Undo::default();
    let result = {
        let work = steps(docker, store, plan, progress, &mut undo);
        tokio::select! {
            r = work => r,
            _ = interrupted() => Err(RestoreError::Failed("interrupted".into())),
        }
    };
    match result {
        Ok(()) => Ok(Outcome {
            backup_id: plan.manifest.backup_id.to_string(),
            source: plan.manifest.target.clone(),
            service: format!("{}/{}", plan.service.project, plan.service.service),
            container: plan.service.container_name.clone(),
            volume: plan
                .new_volume
                .clone()
                .unwrap_or_else(|| plan.service.volume.clone()),
            previous_volume: plan
                .new_volume
                .as_ref()
                .map(|_| plan.service.volume.clone()),
            compose_file: plan.edit.as_ref().map(|e| e.file.display().to_string()),
            compose_backup: plan
                .edit
                .as_ref()
                .map(|e| format!("{}.bak", e.file.display())),
            in_place: plan.options.in_place,
            standby: plan.options.standby,
            scripts: plan.inputs.scripts.iter().map(|(n, _)| n.clone()).collect(),
            bytes: plan.object.size,
            duration_seconds: started.elapsed().as_secs_f64(),
        }),
        Err(e) => {
            let rolled = rollback(docker, plan, &undo).await;
            Err(RestoreError::Failed(format!("{e}\n{rolled}")))
        }
    }
}

async fn interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}

async fn steps(
    docker: &DockerClient,
    store: &dyn Store,
    plan: &Plan,
    progress: &dyn Progress,
    undo: &mut Undo,
) -> Result<(), RestoreError> {
    let s = &plan.service;
    let labels = helper_labels(s);
    let Some(new_volume) = &plan.new_volume else {
        return in_place(docker, store, plan, progress, undo).await;
    };
    // 1. The new volume, filled while the service keeps running.
    docker
        .create_volume(new_volume, plan.volume_labels.clone())
        .await?;
    undo.volume_created = Some(new_volume.clone());
    let helper = docker
        .start_helper(&s.image, &[(new_volume, &s.mount, false)], labels)
        .await?;
    let unpacked = unpack(docker, store, plan, &helper, progress).await;
    let _ = docker.remove_container(&helper).await;
    unpacked?;
    tracing::info!(volume = %new_volume, "Backup unpacked and verified; switching the service.");

    // 2. Switch the container, each step recorded in the journal first done, so that a switch
    //    cut off half-way (the sidecar killed) can be finished or undone later.
    let edit = plan
        .edit
        .as_ref()
        .ok_or_else(|| RestoreError::Failed("a new volume needs a compose edit".into()))?;
    let aside = journal::aside_name(&s.container_name);
    let mut j = Journal {
        backup: plan.manifest.prefix.clone(),
        project: s.project.clone(),
        service: s.service.clone(),
        container_name: s.container_name.clone(),
        old_container_id: s.container_id.clone(),
        aside_name: aside.clone(),
        old_volume: s.volume.clone(),
        new_volume: new_volume.clone(),
        was_running: s.running,
        new_container_id: None,
        edit: edit.clone(),
        step: Step::Unpacked,
    };
    j.record(Step::Unpacked).map_err(|e| journal_error(&j, e))?;
    undo.journal = Some(j.path());
    let inspect = docker.inspect_full(&s.container_id).await?;
    let copy = inspect.copy_on_volume(&s.mount, new_volume);
    docker.stop_container(&s.container_id).await?;
    undo.old_stopped = true;
    j.record(Step::OldStopped)
        .map_err(|e| journal_error(&j, e))?;
    docker.rename_container(&s.container_id, &aside).await?;
    undo.old_renamed_to = Some(aside);
    j.record(Step::OldRenamed)
        .map_err(|e| journal_error(&j, e))?;
    let id = docker.create_copy(&s.container_name, &copy).await?;
    undo.new_container = Some(id.clone());
    j.new_container_id = Some(id.clone());
    j.record(Step::NewCreated)
        .map_err(|e| journal_error(&j, e))?;
    docker.connect_networks(&id, &copy).await?;
    docker.start_container(&id).await?;
    wait_ready(docker, &id, plan).await?;
    post_sql(docker, &id, plan).await?;
    j.record(Step::NewReady).map_err(|e| journal_error(&j, e))?;

    // 3. The compose file, last: from here on `docker compose up -d` keeps the restored data.
    compose::write(edit).map_err(|e| {
        RestoreError::Failed(format!("rewriting {} failed: {e}", edit.file.display()))
    })?;
    undo.compose_written = true;
    j.record(Step::ComposeWritten)
        .map_err(|e| journal_error(&j, e))?;
    if let Err(e) = docker.remove_container(&s.container_id).await {
        tracing::warn!(error = %e, "The old container could not be removed; remove it by hand.");
    }
    j.remove();
    undo.journal = None;
    Ok(())
}

async fn in_place(
    docker: &DockerClient,
    store: &dyn Store,
    plan: &Plan,
    progress: &dyn Progress,
    undo: &mut Undo,
) -> Result<(), RestoreError> {
    let s = &plan.service;
    // Read it once first: damage must show before the old data is deleted.
    progress.start("verify", plan.object.size);
    let verified = fetch::verify_object(store, &plan.manifest, &plan.object).await;
    progress.finish();
    verified.map_err(|e| RestoreError::Failed(format!("{e}: nothing was changed")))?;
    docker.stop_container(&s.container_id).await?;
    undo.old_stopped = true;
    let helper = docker
        .start_helper(&s.image, &[(&s.volume, &s.mount, false)], helper_labels(s))
        .await?;
    let result = async {
        helper_sh(
            docker,
            &helper,
            "set -e; find \"$1\" -mindepth 1 -delete",
            &s.mount,
        )
        .await?;
        undo.wiped = true;
        unpack(docker, store, plan, &helper, progress).await
    }
    .await;
    let _ = docker.remove_container(&helper).await;
    result?;
    docker.start_container(&s.container_id).await?;
    undo.old_stopped = false;
    wait_ready(docker, &s.container_id, plan).await?;
    post_sql(docker, &s.container_id, plan).await
}

/// Puts the service back on its old volume; returns what it did, for the error message.
async fn rollback(docker: &DockerClient, plan: &Plan, undo: &Undo) -> String {
    let s = &plan.service;
    let mut said = Vec::new();
    if undo.compose_written
        && let Some(edit) = &plan.edit
    {
        match compose::revert(edit) {
            Ok(()) => said.push(format!("{} restored", edit.file.display())),
            Err(e) => said.push(format!(
                "could not restore {} from its .bak: {e}",
                edit.file.display()
            )),
        }
    }
    if let Some(id) = &undo.new_container {
        let _ = docker.remove_container(id).await;
    }
    if undo.old_renamed_to.is_some()
        && let Err(e) = docker
            .rename_container(&s.container_id, &s.container_name)
            .await
    {
        said.push(format!("could not rename the old container back: {e}"));
    }
    if undo.wiped {
        said.push(format!(
            "volume {} was emptied for the in-place restore; its old data is gone. Restore again, or restore into a new volume",
            s.volume
        ));
        return said.join("; ");
    }
    if undo.old_stopped && s.running {
        match docker.start_container(&s.container_id).await {
            Ok(()) => said.push(format!(
                "{} is running on its old volume {} again",
                s.container_name, s.volume
            )),
            Err(e) => said.push(format!(
                "could not start {} again: {e}; run `docker compose up -d {}`",
                s.container_name, s.service
            )),
        }
    } else if s.running {
        said.push(format!(
            "{} kept running on volume {}",
            s.container_name, s.volume
        ));
    }
    if let Some(v) = &undo.volume_created {
        match docker.remove_volume(v).await {
            Ok(()) => said.push(format!("new volume {v} removed")),
            Err(e) => said.push(format!("could not remove the new volume {v}: {e}")),
        }
    }
    if plan.edit.is_some() && !undo.compose_written {
        said.push("the compose file was not changed".into());
    }
    if let Some(j) = &undo.journal {
        let _ = std::fs::remove_file(j);
    }
    format!("Rolled back: {}.", said.join("; "))
}

pub mod compose;
pub mod journal;

use journal::{Journal, Step};

/// Unfinished switches of services in scope: each old container waiting aside, as
/// `project/service (old container <name>)`.
pub async fn unfinished(docker: &DockerClient) -> Vec<String> {
    let Ok(aside) = docker.list_named(journal::ASIDE_SUFFIX).await else {
        return vec![];
    };
    aside
        .iter()
        .filter(|c| c.name.ends_with(journal::ASIDE_SUFFIX))
        .map(|c| {
            let who = crate::model::TargetId::of(&c.labels, &c.name)
                .map(|t| t.to_string())
                .unwrap_or_else(|| c.name.clone());
            format!("{who} (old container {})", c.name)
        })
        .collect()
}

/// The journal of the unfinished switch of `name` (`project/service` or the service).
pub async fn find_journal(docker: &DockerClient, name: &str) -> Result<Journal, RestoreError> {
    let aside = docker.list_named(journal::ASIDE_SUFFIX).await?;
    let found: Vec<&crate::engine::docker::Container> = aside
        .iter()
        .filter(|c| c.name.ends_with(journal::ASIDE_SUFFIX))
        .filter(|c| {
            crate::model::TargetId::of(&c.labels, &c.name)
                .is_some_and(|t| t.to_string() == name || t.service == name)
        })
        .collect();
    let c = match found.as_slice() {
        [c] => *c,
        [] => {
            return Err(RestoreError::Usage(format!(
                "{name:?} has no unfinished physical restore (no container named *{}): see `pgctl status`",
                journal::ASIDE_SUFFIX
            )));
        }
        _ => {
            return Err(RestoreError::Usage(format!(
                "{name:?} is ambiguous: name it as project/service"
            )));
        }
    };
    let files: Vec<PathBuf> = c
        .labels
        .get("com.docker.compose.project.config_files")
        .map(|v| v.split(',').map(PathBuf::from).collect())
        .unwrap_or_default();
    let service = c
        .labels
        .get("com.docker.compose.service")
        .cloned()
        .unwrap_or_default();
    let mounts = own_mounts(docker).await;
    let local = files
        .first()
        .and_then(|f| compose::local_path(f, &mounts, |p| p.is_file()))
        .ok_or_else(|| {
            RestoreError::Refused(format!(
                "the compose file of {name} ({}) is not reachable here: mount the project directory into the backup service",
                files.first().map(|f| f.display().to_string()).unwrap_or_default()
            ))
        })?;
    Journal::read(&journal::path_for(&local, &service)).map_err(RestoreError::Failed)
}

/// Finishes an interrupted switch: the new container runs and answers, the compose file is
/// rewritten, the old container goes. Only once the new container exists; before that, roll back.
pub async fn resume(docker: &DockerClient, mut j: Journal) -> Result<String, RestoreError> {
    let cut_at = j.step;
    if j.step < Step::NewCreated {
        return Err(RestoreError::Refused(format!(
            "the restore of {}/{} stopped before the new container existed (at {:?}): nothing to finish; run `pgctl restore --rollback {}/{}`",
            j.project, j.service, j.step, j.project, j.service
        )));
    }
    let new = docker.inspect(&j.container_name).await?;
    if new.id == j.old_container_id {
        return Err(RestoreError::Refused(format!(
            "{} is the old container again: the switch was undone by hand; run `pgctl restore --rollback {}/{}` to tidy up",
            j.container_name, j.project, j.service
        )));
    }
    if !new.running {
        docker.start_container(&new.id).await?;
    }
    let mut answered = false;
    for _ in 0..120 {
        let probe = docker
            .exec_capture(
                &new.id,
                &[
                    "pg_isready".to_string(),
                    "-q".into(),
                    "-h".into(),
                    "127.0.0.1".into(),
                ],
                &[],
                None,
            )
            .await;
        if probe.is_ok_and(|(exit, _)| exit.code == 0) {
            answered = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    if !answered {
        return Err(RestoreError::Failed(format!(
            "{} on the restored volume {} does not answer after 2 minutes: run `pgctl restore --rollback {}/{}`",
            j.container_name, j.new_volume, j.project, j.service
        )));
    }
    j.record(Step::NewReady).map_err(|e| journal_error(&j, e))?;
    if !j.compose_written() {
        compose::write(&j.edit).map_err(|e| {
            RestoreError::Failed(format!("rewriting {} failed: {e}", j.edit.file.display()))
        })?;
    }
    j.record(Step::ComposeWritten)
        .map_err(|e| journal_error(&j, e))?;
    if let Err(e) = docker.remove_container(&j.old_container_id).await
        && !e.is_not_found()
    {
        tracing::warn!(error = %e, "The old container could not be removed; remove it by hand.");
    }
    j.remove();
    Ok(format!(
        "finished the restore of {}/{}: {} runs on {}; {} names it; the previous volume {} is kept{}",
        j.project,
        j.service,
        j.container_name,
        j.new_volume,
        j.edit.file.display(),
        j.old_volume,
        if cut_at < Step::NewReady {
            " (the switch was cut off before the server was checked and any --post-sql scripts ran: check it, and run such scripts by hand)"
        } else {
            ""
        }
    ))
}

/// Undoes an interrupted switch: the compose file back, the new container and volume gone, the
/// old container under its name again and started if it ran before.
pub async fn roll_back(docker: &DockerClient, j: Journal) -> Result<String, RestoreError> {
    let mut said = Vec::new();
    if j.compose_written() {
        compose::revert(&j.edit)
            .or_else(|_| std::fs::write(&j.edit.local, &j.edit.before))
            .map_err(|e| {
                RestoreError::Failed(format!("cannot put {} back: {e}", j.edit.file.display()))
            })?;
        said.push(format!("{} restored", j.edit.file.display()));
    }
    if let Ok(c) = docker.inspect(&j.container_name).await
        && c.id != j.old_container_id
    {
        docker.remove_container(&c.id).await?;
        said.push(format!(
            "the restored container {} removed",
            j.container_name
        ));
    }
    let old = docker.inspect(&j.old_container_id).await?;
    if old.name != j.container_name {
        docker
            .rename_container(&j.old_container_id, &j.container_name)
            .await?;
    }
    if j.was_running && !old.running {
        docker.start_container(&j.old_container_id).await?;
    }
    said.push(format!(
        "{} is back on its volume {}{}",
        j.container_name,
        j.old_volume,
        if j.was_running { " and running" } else { "" }
    ));
    match docker.remove_volume(&j.new_volume).await {
        Ok(()) => said.push(format!("the new volume {} removed", j.new_volume)),
        Err(e) if e.is_not_found() => {}
        Err(e) => said.push(format!(
            "could not remove the new volume {}: {e}",
            j.new_volume
        )),
    }
    j.remove();
    Ok(format!(
        "rolled back the restore of {}/{}: {}",
        j.project,
        j.service,
        said.join("; ")
    ))
}

fn journal_error(j: &Journal, e: std::io::Error) -> RestoreError {
    RestoreError::Failed(format!(
        "cannot write the restore journal {}: {e}",
        j.path().display()
    ))
}

#[cfg(test)]
mod tests;
