//! `pgctl rescue SERVICE --reset-wal --yes`: the last resort for a Postgres service that will
//! not start because its write-ahead log is damaged or missing ("could not locate a valid
//! checkpoint record"). Restoring a backup is the first choice; this keeps what the data files
//! hold and loses the transactions whose WAL is gone.
//!
//! The order keeps a way back at every step: the server must be down (a healthy one is
//! refused); the data volume is copied whole to a new volume first; `pg_resetwal --dry-run`
//! shows what will be written; `pg_resetwal -f` runs from the service's own image (its own
//! major) on the stopped volume; the service starts and what the server says is reported. When
//! it still cannot start, the volume's content is put back from the copy. The copy is always
//! kept and named.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde::Serialize;

use super::RestoreError;
use super::physical::{Service, service_of};
use crate::engine::container::{Health, Inspected};
use crate::engine::docker::DockerClient;
use crate::engine::pg::Access;

/// How long the rescued server gets to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// Labels the copy volume and the helper container carry.
const RESCUE_LABEL: &str = "pgbackup.rescue";

#[derive(Debug, Serialize)]
pub struct Outcome {
    pub service: String,
    pub container: String,
    pub volume: String,
    /// The copy of the volume as it was before the reset (the way back), kept.
    pub copy: String,
    /// `pg_resetwal --dry-run`'s output: the values the reset wrote.
    pub dry_run: String,
    /// `pg_resetwal`'s own output.
    pub reset: String,
    /// What the started server answered (version, recovery state, databases).
    pub server: String,
}

/// Where the service's container stands, for the refusal and the plan. Pure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Running and answering queries: nothing to rescue.
    Healthy,
    /// Running but not answering (yet): crash recovery may still be replaying WAL.
    Starting,
    /// Restarting again and again, or stopped: a candidate.
    Down,
}

/// Decides from the container's state and whether a query was answered. Pure.
pub fn standing(running: bool, restarting: bool, answered: bool) -> Standing {
    match (running && !restarting, answered) {
        (true, true) => Standing::Healthy,
        (true, false) => Standing::Starting,
        (false, _) => Standing::Down,
    }
}

/// The name of the copy of `volume` made at `stamp`. Pure.
pub fn copy_name(volume: &str, stamp: &str) -> String {
    format!("{volume}-before-resetwal-{stamp}")
}

/// Runs the rescue. `say` prints each step as it happens (the dry run's output among them).
pub async fn reset_wal(
    docker: &DockerClient,
    name: &str,
    say: &dyn Fn(&str),
) -> Result<Outcome, RestoreError> {
    let inspect = find_service(docker, name).await?;
    let service = service_of(&inspect, "/var/lib/postgresql/data")?;
    let label = format!("{}/{}", service.project, service.service);
    let state = inspect.state();
    let answered = state.running && !state.restarting && answers(docker, &service).await;
    match standing(state.running, state.restarting, answered) {
        Standing::Healthy => {
            return Err(RestoreError::Refused(format!(
                "{label} is running and answers queries: there is nothing to rescue, and pg_resetwal on a working server would damage it (nothing was changed)"
            )));
        }
        Standing::Starting => {
            return Err(RestoreError::Refused(format!(
                "{label} is running but does not answer yet: crash recovery may still be replaying WAL. Wait for it; if it keeps failing, stop it (docker compose stop {}) and run the rescue again (nothing was changed)",
                service.service
            )));
        }
        Standing::Down => {}
    }
    if state.running || state.restarting {
        say(&format!(
            "Stopping {} (restarting again and again).",
            service.container_name
        ));
        docker.stop_container(&service.container_id).await?;
    }
    let stamp = Utc::now().format("%Y%m%d%H%M%S").to_string();
    let copy = copy_name(&service.volume, &stamp);
    let labels = HashMap::from([
        (RESCUE_LABEL.to_string(), "reset-wal".to_string()),
        ("pgbackup.rescue.of".to_string(), service.volume.clone()),
    ]);
    docker.create_volume(&copy, labels.clone()).await?;
    let mut helper_labels = labels;
    helper_labels.insert("pgbackup.helper".into(), "rescue".into());
    let helper = docker
        .start_helper(
            &service.image,
            &[(&service.volume, "/data", false), (&copy, "/copy", false)],
            helper_labels,
        )
        .await
        .map_err(|e| {
            RestoreError::Failed(format!(
                "cannot start a helper from {} to copy the volume: {e}; nothing was changed (the empty volume {copy} may be removed)",
                service.image
            ))
        })?;
    let result = rescue(docker, &helper, &service, &copy, say).await;
    let _ = docker.remove_container(&helper).await;
    result
}

/// The steps after the copy volume and the helper exist.
async fn rescue(
    docker: &DockerClient,
    helper: &str,
    service: &Service,
    copy: &str,
    say: &dyn Fn(&str),
) -> Result<Outcome, RestoreError> {
    let label = format!("{}/{}", service.project, service.service);
    say(&format!(
        "Copying volume {} to {copy} (the way back)…",
        service.volume
    ));
    // `cp -a` keeps owners, modes and links; the file counts must then agree.
    let copied = sh(
        docker,
        helper,
        None,
        "cp -a /data/. /copy/ && a=$(find /data | wc -l) && b=$(find /copy | wc -l) && [ \"$a\" = \"$b\" ] && echo \"$a\"",
    )
    .await?;
    let files = match copied {
        Ok(out) => out.trim().to_string(),
        Err(e) => {
            return Err(RestoreError::Failed(format!(
                "copying the volume failed: {e}; nothing was changed in {} (the incomplete copy {copy} may be removed)",
                service.volume
            )));
        }
    };
    say(&format!("Copied {files} files and directories to {copy}."));
    let dir = in_helper(&service.data_dir, &service.mount);
    // The server died without removing its lock file; pg_resetwal refuses while it exists.
    // The container is stopped (checked above), so the file is stale.
    let user = owner(docker, helper, &dir).await?;
    let pg_resetwal = format!(
        "PATH=\"$PATH:$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | tr '\\n' ':')\"; rm -f '{dir}/postmaster.pid'; exec pg_resetwal"
    );
    let dry_run = match sh(
        docker,
        helper,
        Some(&user),
        &format!("{pg_resetwal} --dry-run -D '{dir}'"),
    )
    .await?
    {
        Ok(out) => out,
        Err(e) => {
            return Err(RestoreError::Failed(format!(
                "pg_resetwal --dry-run failed: {e}; the data directory was not changed (its stale postmaster.pid removed); the copy is {copy}"
            )));
        }
    };
    say(&format!(
        "pg_resetwal --dry-run says:\n{}",
        dry_run.trim_end()
    ));
    let reset = match sh(
        docker,
        helper,
        Some(&user),
        &format!("{pg_resetwal} -f -D '{dir}'"),
    )
    .await?
    {
        Ok(out) => out,
        Err(e) => {
            put_back(docker, helper, copy).await?;
            return Err(RestoreError::Failed(format!(
                "pg_resetwal failed: {e}; the volume {} holds what it held before again (from {copy}, which is kept)",
                service.volume
            )));
        }
    };
    say(&format!("pg_resetwal: {}", reset.trim()));
    say(&format!("Starting {}…", service.container_name));
    docker.start_container(&service.container_id).await?;
    match wait_answering(docker, service).await {
        Ok(server) => Ok(Outcome {
            service: label,
            container: service.container_name.clone(),
            volume: service.volume.clone(),
            copy: copy.to_string(),
            dry_run,
            reset: reset.trim().to_string(),
            server,
        }),
        Err(why) => {
            let logs = docker.logs_tail(&service.container_id, 15).await;
            let _ = docker.stop_container(&service.container_id).await;
            put_back(docker, helper, copy).await?;
            Err(RestoreError::Failed(format!(
                "{label} still cannot start after pg_resetwal ({why}); its last log lines:\n{logs}\nThe volume {} holds what it held before the rescue again (from {copy}, which is kept); the service is stopped. Restore a backup: pgctl restore latest --to {label} --physical, or a logical one into a new service",
                service.volume
            )))
        }
    }
}

/// Puts the data volume's content back from the copy.
async fn put_back(docker: &DockerClient, helper: &str, copy: &str) -> Result<(), RestoreError> {
    sh(
        docker,
        helper,
        None,
        "find /data -mindepth 1 -delete && cp -a /copy/. /data/",
    )
    .await?
    .map(|_| ())
    .map_err(|e| {
        RestoreError::Failed(format!(
            "putting the volume back from {copy} failed too ({e}): copy it back by hand (docker run --rm -v {copy}:/from -v VOLUME:/to IMAGE sh -c 'cp -a /from/. /to/')"
        ))
    })
}

/// The user that owns the data directory (pg_resetwal refuses to run as root).
async fn owner(docker: &DockerClient, helper: &str, dir: &str) -> Result<String, RestoreError> {
    let out = sh(docker, helper, None, &format!("stat -c %u:%g '{dir}'"))
        .await?
        .map_err(|e| {
            RestoreError::Failed(format!(
                "the data directory {dir} cannot be read in the volume: {e}"
            ))
        })?;
    Ok(out.trim().to_string())
}

/// `sh -c script` in the helper as `user` (root when `None`): its stdout, or its exit code
/// and stderr.
async fn sh(
    docker: &DockerClient,
    helper: &str,
    user: Option<&str>,
    script: &str,
) -> Result<Result<String, String>, RestoreError> {
    let cmd = ["sh".to_string(), "-c".to_string(), script.to_string()];
    let (exit, out) = docker.exec_capture(helper, &cmd, &[], user).await?;
    Ok(if exit.code == 0 {
        Ok(out)
    } else {
        Err(format!("exit code {}: {}", exit.code, exit.stderr.trim()))
    })
}

/// `data_dir` as the helper sees it (the volume at `/data`). Pure.
pub fn in_helper(data_dir: &str, mount: &str) -> String {
    let rest = data_dir
        .strip_prefix(mount.trim_end_matches('/'))
        .unwrap_or("")
        .trim_matches('/');
    if rest.is_empty() {
        "/data".to_string()
    } else {
        format!("/data/{rest}")
    }
}

fn access(docker: &DockerClient, service: &Service) -> Access {
    Access::Exec {
        docker: docker.clone(),
        container: service.container_id.clone(),
        user: service.user.clone(),
    }
}

async fn answers(docker: &DockerClient, service: &Service) -> bool {
    access(docker, service)
        .query("postgres", "SELECT 1")
        .await
        .is_ok()
}

/// Waits until the started server answers; what it says (version, recovery, databases).
async fn wait_answering(docker: &DockerClient, service: &Service) -> Result<String, String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut last = String::new();
    loop {
        let state = docker
            .inspect_full(&service.container_id)
            .await
            .map_err(|e| e.to_string())?
            .state();
        if !state.running || state.restarting {
            return Err(format!("it stopped, exit code {}", state.exit_code));
        }
        if state.health != Health::Starting {
            match access(docker, service)
                .query(
                    "postgres",
                    "SELECT version() || '; in recovery: ' || pg_is_in_recovery() || '; databases: ' || (SELECT string_agg(datname, ', ' ORDER BY datname) FROM pg_database WHERE NOT datistemplate)",
                )
                .await
            {
                Ok(rows) => return Ok(rows.join("\n")),
                Err(e) => last = e.to_string(),
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "it did not answer within {READY_TIMEOUT:?}: {last}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The service's container, running or not, by [`super::choose_container`]'s rule.
async fn find_service(docker: &DockerClient, name: &str) -> Result<Inspected, RestoreError> {
    let all = docker.list_named("").await?;
    match super::choose_container(&all, name, None, docker.own_project()) {
        Ok(c) => Ok(docker.inspect_full(&c.id).await?),
        Err(none) if none.is_empty() => Err(RestoreError::Usage(format!(
            "no container, running or stopped, is named {name:?} (as project/service, service or container name) in this sidecar's scope: check `docker compose ps -a`"
        ))),
        Err(many) => Err(super::ambiguous(name, &many)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_server_that_is_down_is_rescued() {
        assert_eq!(standing(true, false, true), Standing::Healthy);
        assert_eq!(standing(true, false, false), Standing::Starting);
        assert_eq!(standing(true, true, false), Standing::Down);
        assert_eq!(standing(false, false, false), Standing::Down);
    }

    #[test]
    fn the_data_directory_is_found_under_the_mount() {
        assert_eq!(
            in_helper("/var/lib/postgresql/data", "/var/lib/postgresql/data"),
            "/data"
        );
        assert_eq!(
            in_helper("/var/lib/postgresql/18/docker", "/var/lib/postgresql"),
            "/data/18/docker"
        );
        assert_eq!(
            in_helper(
                "/var/lib/postgresql/data/pgdata",
                "/var/lib/postgresql/data/"
            ),
            "/data/pgdata"
        );
        assert_eq!(
            copy_name("shop_db-data", "20261203101500"),
            "shop_db-data-before-resetwal-20261203101500"
        );
    }
}
