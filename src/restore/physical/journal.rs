//! The durable record of a physical restore's switch, next to the compose file
//! (`.pgbackup-restore-<service>.json`): written before the service is stopped, updated after
//! each step, removed when the switch is finished or rolled back. If the sidecar dies half-way
//! (killed, host reboot), `pgctl restore --resume SERVICE` finishes the switch from it and
//! `pgctl restore --rollback SERVICE` puts the service back on its old volume; `pgctl status`
//! names the service meanwhile (the old container waits, renamed `<name>-pgbackup-replaced`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::restore::physical::compose::Edit;

/// How far the switch got. Each step is recorded once it is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// The new volume is filled and verified; nothing else changed.
    Unpacked,
    OldStopped,
    /// The old container is renamed aside.
    OldRenamed,
    NewCreated,
    /// The new container runs and answers (and `--post-sql` ran).
    NewReady,
    ComposeWritten,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    pub backup: String,
    pub project: String,
    pub service: String,
    pub container_name: String,
    pub old_container_id: String,
    pub aside_name: String,
    pub old_volume: String,
    pub new_volume: String,
    /// Whether the service ran before the restore (a rollback starts it again only then).
    pub was_running: bool,
    pub new_container_id: Option<String>,
    /// The compose edit as planned: the file before and after.
    pub edit: Edit,
    pub step: Step,
}

/// The name the old container waits under during the switch.
pub fn aside_name(container_name: &str) -> String {
    format!("{container_name}{ASIDE_SUFFIX}")
}

pub const ASIDE_SUFFIX: &str = "-pgbackup-replaced";

/// The journal's path: next to the (first) compose file, where this process reads it.
pub fn path_for(compose_local: &Path, service: &str) -> PathBuf {
    compose_local
        .parent()
        .unwrap_or(Path::new("."))
        .join(format!(".pgbackup-restore-{service}.json"))
}

impl Journal {
    pub fn path(&self) -> PathBuf {
        path_for(&self.edit.local, &self.service)
    }

    /// Records `step` durably (temporary file, fsync, rename, fsync of the directory).
    pub fn record(&mut self, step: Step) -> std::io::Result<()> {
        use std::io::Write;
        self.step = step;
        let path = self.path();
        let dir = path.parent().unwrap_or(Path::new("."));
        let tmp = dir.join(format!(
            ".{}.tmp",
            path.file_name().unwrap_or_default().to_string_lossy()
        ));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(dir)?.sync_all()
    }

    pub fn read(path: &Path) -> Result<Journal, String> {
        let text =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        serde_json::from_slice(&text).map_err(|e| format!("{} is damaged: {e}", path.display()))
    }

    pub fn remove(&self) {
        let _ = std::fs::remove_file(self.path());
    }

    /// Whether the compose file holds the edit already.
    pub fn compose_written(&self) -> bool {
        std::fs::read_to_string(&self.edit.local).is_ok_and(|t| t == self.edit.after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_a_reread_and_steps_are_ordered() {
        let dir = tempfile::tempdir().unwrap();
        let compose = dir.path().join("compose.yaml");
        std::fs::write(&compose, "before").unwrap();
        let mut j = Journal {
            backup: "shop/db/20261121T101500.000Z-0a1b2c-physical".into(),
            project: "shop".into(),
            service: "db".into(),
            container_name: "shop-db-1".into(),
            old_container_id: "abc".into(),
            aside_name: aside_name("shop-db-1"),
            old_volume: "shop_db-data".into(),
            new_volume: "shop_db-data-restored".into(),
            was_running: true,
            new_container_id: None,
            edit: Edit {
                file: compose.clone(),
                local: compose.clone(),
                service: "db".into(),
                index: 0,
                old_key: "db-data".into(),
                new_key: "db-data-restored".into(),
                before: "before".into(),
                after: "after".into(),
            },
            step: Step::Unpacked,
        };
        j.record(Step::OldRenamed).unwrap();
        assert_eq!(j.path(), dir.path().join(".pgbackup-restore-db.json"));
        let back = Journal::read(&j.path()).unwrap();
        assert_eq!(back, j);
        assert!(!back.compose_written());
        std::fs::write(&compose, "after").unwrap();
        assert!(back.compose_written());
        assert!(Step::Unpacked < Step::OldStopped && Step::NewReady < Step::ComposeWritten);
        j.remove();
        assert!(Journal::read(&j.path()).is_err());
    }
}
