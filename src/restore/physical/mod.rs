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
//!
//! The files, in the order a restore runs: [`prepare`] (preflight, nothing changes), [`service`]
//! and [`plan`] (pure facts and decisions), [`execute`] (unpack, switch, compose edit),
//! [`rollback`] (undo, and `--resume`/`--rollback` of a cut-off switch from its [`journal`]),
//! [`compose`] (comment-preserving compose file edits).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::AsyncWriteExt;

use crate::engine::container::{Health, Inspected};
use crate::engine::docker::{DockerClient, ExecInput};
use crate::engine::pg::{self, Access};
use crate::model::layout::Kind;
use crate::model::manifest::{Manifest, Object, ObjectKind};
use crate::pipeline::fetch;
use crate::restore::{ChunkSink, Progress, RestoreError};
use crate::store::Store;
use crate::table::human_bytes;
pub mod compose;
pub mod journal;

use compose::Edit;
use journal::{Journal, Step};
mod execute;
mod plan;
mod prepare;
mod rollback;
mod service;
pub use execute::*;
pub use plan::*;
pub use prepare::*;
pub use rollback::*;
pub use service::*;

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
    /// What decrypts an encrypted base backup.
    pub keys: Option<std::sync::Arc<crate::model::encryption::Identities>>,
}

/// Files the options name, read before anything starts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inputs {
    pub auto_conf: Option<Vec<u8>>,
    pub scripts: Vec<crate::restore::scripts::Script>,
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
        inputs.scripts = crate::restore::scripts::read(dir)?;
    }
    Ok(inputs)
}

#[cfg(test)]
mod tests;
