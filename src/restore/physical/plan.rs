//! The physical restore plan: checks that refuse before anything changes, and the steps as
//! the user reads them. Pure.

use super::*;

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

pub(super) fn require_physical(m: &Manifest) -> Result<(), RestoreError> {
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
