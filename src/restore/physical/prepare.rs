//! Preflight: the service, the compose file edit, the probe in a helper container; nothing
//! changes here.

use super::*;

/// The sidecar's own bind mounts (host source → path here), to reach compose files.
pub(super) async fn own_mounts(docker: &DockerClient) -> Vec<(PathBuf, PathBuf)> {
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
pub(super) async fn plan_compose(
    docker: &DockerClient,
    s: &Service,
    stamp: &str,
) -> Result<Edit, String> {
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

pub(super) fn tempfile_probe(dir: &Path) -> std::io::Result<()> {
    let p = dir.join(format!(".pgbackup-write-test-{}", std::process::id()));
    std::fs::write(&p, b"")?;
    std::fs::remove_file(&p)
}

pub(super) fn helper_labels(s: &Service) -> HashMap<String, String> {
    HashMap::from([
        (HELPER_LABEL.to_string(), "physical-restore".to_string()),
        ("pgbackup.helper.for".to_string(), s.container_name.clone()),
    ])
}

/// `sh -c script` with `$1` = `arg` (never interpolated into the script).
pub(super) fn sh(script: &str, arg: &str) -> Vec<String> {
    ["sh", "-c", script, "sh", arg]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// Runs `script` (with `$1` = `arg`) as root in a helper and returns its stdout.
pub(super) async fn helper_sh(
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
