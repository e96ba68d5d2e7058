//! `--post-sql DIR`: the `*.sql` files of a directory, read before a restore starts and run in
//! name order once the restored databases answer, each with `ON_ERROR_STOP` (a failure undoes
//! the restore, logical or physical).

use std::path::{Path, PathBuf};

use super::RestoreError;
use crate::engine::pg::Access;

/// A script's file name and its text.
pub type Script = (String, Vec<u8>);

/// Reads the directory's `*.sql` files in name order. Paths are as this process sees them
/// (inside the sidecar: a mounted path).
pub fn read(dir: &Path) -> Result<Vec<Script>, RestoreError> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        RestoreError::Usage(format!(
            "--post-sql {}: {e}; pass a directory of *.sql files pgctl can read (in the sidecar: a path under a mounted directory)",
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
    let mut scripts = Vec::new();
    for f in files {
        let bytes = std::fs::read(&f).map_err(|e| {
            RestoreError::Usage(format!("--post-sql: cannot read {}: {e}", f.display()))
        })?;
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        scripts.push((name, bytes));
    }
    Ok(scripts)
}

/// Runs `scripts` in order with psql through `access`, on `database`; stops at the first that
/// fails.
pub async fn run(access: &Access, database: &str, scripts: &[Script]) -> Result<(), RestoreError> {
    for (name, sql) in scripts {
        let exit = access.feed(database, sql).await?;
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
