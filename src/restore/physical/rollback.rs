//! Undoing a switch: after a failure (from what the run did) and after a cut-off (from the
//! journal next to the compose file): `pgctl restore --resume` / `--rollback`.

use super::*;
use crate::engine::Lifecycle;

/// Puts the service back on its old volume; returns what it did, for the error message.
pub(super) async fn rollback(docker: &dyn Lifecycle, plan: &Plan, undo: &Undo) -> String {
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

pub(super) fn journal_error(j: &Journal, e: std::io::Error) -> RestoreError {
    RestoreError::Failed(format!(
        "cannot write the restore journal {}: {e}",
        j.path().display()
    ))
}
