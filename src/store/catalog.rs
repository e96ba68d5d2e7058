//! Reading what is stored: committed backups are the folders that hold a `manifest.json`.

use crate::model::layout::{self, BackupId, Kind, MANIFEST};
use crate::model::manifest::Manifest;
use crate::store::{Store, StoreError};

/// Every key under `prefix` (any number of objects).
pub async fn keys(store: &dyn Store, prefix: &str) -> Result<Vec<String>, StoreError> {
    Ok(store
        .list(prefix)
        .await?
        .into_iter()
        .map(|o| o.key)
        .collect())
}

/// The largest `manifest.json` read: real ones are a few KiB (about 300 bytes per database), so
/// anything near this is not one of ours and is refused rather than read into memory.
pub const MANIFEST_MAX: u64 = 16 << 20;

pub async fn read_manifest(store: &dyn Store, key: &str) -> Result<Manifest, String> {
    let body = crate::store::read_small(store, key, MANIFEST_MAX, "manifest").await?;
    let mut m = Manifest::from_json(&body).map_err(|e| format!("{key}: {e}"))?;
    // The objects are where the manifest is: a backup copied or moved to another folder is
    // read there, never from the folder it was first written to.
    m.prefix = key
        .rsplit_once('/')
        .map(|(dir, _)| dir)
        .unwrap_or("")
        .to_string();
    Ok(m)
}

/// Keys of the manifests under `[S3_PREFIX/][target_prefix]`, with their backup ids.
pub async fn manifest_keys(
    store: &dyn Store,
    target_prefix: Option<&str>,
) -> Result<Vec<(BackupId, String)>, StoreError> {
    let root = crate::store::folder(&layout::join(&[
        store.prefix(),
        target_prefix.unwrap_or(""),
    ]));
    Ok(keys(store, &root)
        .await?
        .into_iter()
        .filter_map(|key| {
            let (_, id, name) = layout::parse_key(&key)?;
            (name == MANIFEST).then_some((id, key.clone()))
        })
        .collect())
}

/// Reads the manifests at `keys`, oldest first. Unreadable manifests are reported, not fatal.
pub async fn read_manifests(
    store: &dyn Store,
    keys: &[(BackupId, String)],
) -> (Vec<Manifest>, Vec<String>) {
    let mut manifests = Vec::new();
    let mut problems = Vec::new();
    for (_, key) in keys {
        match read_manifest(store, key).await {
            Ok(m) => manifests.push(m),
            Err(e) => problems.push(e),
        }
    }
    manifests.sort_by(|a, b| (a.backup_id, &a.target).cmp(&(b.backup_id, &b.target)));
    (manifests, problems)
}

/// Committed backups under `[S3_PREFIX/][target_prefix]`, oldest first. Unreadable manifests
/// are reported, not fatal.
pub async fn committed(
    store: &dyn Store,
    target_prefix: Option<&str>,
) -> Result<(Vec<Manifest>, Vec<String>), StoreError> {
    let keys = manifest_keys(store, target_prefix).await?;
    Ok(read_manifests(store, &keys).await)
}

/// The backup folders directly under `dir` (committed or not): one entry per backup however
/// many objects each holds.
pub async fn folders(store: &dyn Store, dir: &str) -> Result<Vec<BackupId>, StoreError> {
    let mut out: Vec<BackupId> = store
        .folders(dir)
        .await?
        .iter()
        .filter_map(|name| name.parse::<BackupId>().ok())
        .collect();
    out.sort();
    Ok(out)
}

/// The newest committed backup of `kind` in `dir` written by `target` (when given): folders
/// newest first, the first with a manifest wins (a newer backup still being written, or one that
/// failed, is skipped; so is one another target wrote into this folder).
pub async fn latest(
    store: &dyn Store,
    dir: &str,
    kind: Kind,
    target: Option<&str>,
) -> Result<Option<Manifest>, StoreError> {
    let mut ids = folders(store, dir).await?;
    ids.retain(|id| id.kind == kind);
    for id in ids.iter().rev() {
        let key = layout::join(&[dir, &id.to_string(), MANIFEST]);
        if store.head(&key).await?.is_some() {
            let m = read_manifest(store, &key)
                .await
                .map_err(|reason| StoreError::Other {
                    op: "GetObject",
                    location: store.location(),
                    reason,
                })?;
            if target.is_none_or(|t| t == m.target) {
                return Ok(Some(m));
            }
        }
    }
    Ok(None)
}

/// The target that wrote the newest committed backup in `dir`, if any.
pub async fn folder_owner(store: &dyn Store, dir: &str) -> Result<Option<String>, StoreError> {
    let ids = folders(store, dir).await?;
    for id in ids.iter().rev() {
        let key = layout::join(&[dir, &id.to_string(), MANIFEST]);
        if store.head(&key).await?.is_some() {
            return Ok(read_manifest(store, &key).await.ok().map(|m| m.target));
        }
    }
    Ok(None)
}
