//! Carrying out the plan: unpack into a new volume, switch the service onto it, wait until it
//! answers as the backed-up cluster, rewrite the compose file; undo on any failure.

use super::*;

/// Stdin of a command in a container as a [`ChunkSink`].
pub(super) struct ExecSink(ExecInput);

impl ChunkSink for ExecSink {
    async fn send(&mut self, chunk: Bytes) -> std::io::Result<()> {
        self.0.write_all(&chunk).await
    }
}

/// Unpacks the backup into `dir` inside `helper` (a fresh directory or one just emptied), with
/// the image's postgres user as owner, and writes the option files.
pub(super) async fn unpack(
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
        plan.options.keys.as_deref(),
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
pub(super) async fn wait_ready(
    docker: &DockerClient,
    id: &str,
    plan: &Plan,
) -> Result<(), RestoreError> {
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
pub(super) async fn post_sql(
    docker: &DockerClient,
    id: &str,
    plan: &Plan,
) -> Result<(), RestoreError> {
    let access = Access::Exec {
        docker: docker.clone(),
        container: id.to_string(),
        user: plan.service.user.clone(),
    };
    crate::restore::scripts::run(&access, &plan.service.database, &plan.inputs.scripts).await
}

/// What has been changed so far, to undo it.
#[derive(Default)]
pub(super) struct Undo {
    pub(super) volume_created: Option<String>,
    pub(super) old_renamed_to: Option<String>,
    pub(super) old_stopped: bool,
    pub(super) new_container: Option<String>,
    pub(super) compose_written: bool,
    /// In place: the old data is gone, there is nothing to go back to.
    pub(super) wiped: bool,
    /// The switch's journal, removed once the rollback is done.
    pub(super) journal: Option<PathBuf>,
}

/// Runs the plan; on failure or interruption puts the service back as it was.
pub async fn execute(
    docker: &DockerClient,
    store: &dyn Store,
    plan: &Plan,
    progress: &dyn Progress,
) -> Result<Outcome, RestoreError> {
    let keys = plan.options.keys.as_deref();
    crate::restore::check_keys(store, &plan.manifest, &[&plan.object], keys).await?;
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

pub(super) async fn interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}

pub(super) async fn steps(
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

pub(super) async fn in_place(
    docker: &DockerClient,
    store: &dyn Store,
    plan: &Plan,
    progress: &dyn Progress,
    undo: &mut Undo,
) -> Result<(), RestoreError> {
    let s = &plan.service;
    // Read it once first: damage must show before the old data is deleted.
    progress.start("verify", plan.object.size);
    let keys = plan.options.keys.as_deref();
    let verified = fetch::verify_object(store, &plan.manifest, &plan.object, keys).await;
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
