//! The shared tail of every backup: its folder must be its own and new, `SHA256SUMS`, every
//! object checked in the store, then `manifest.json` last; and the removal of a failed one.

use super::*;

/// `SHA256SUMS` for the objects written so far.
pub(super) async fn upload_sums(
    ctx: &Ctx<'_>,
    dir: &str,
    objects: &[Object],
) -> Result<(), BackupError> {
    let sums: Vec<(String, String)> = objects
        .iter()
        .map(|o| (o.name.clone(), o.sha256.clone()))
        .collect();
    ctx.store
        .put(
            &layout::join(&[dir, layout::SUMS]),
            Bytes::from(layout::sums_file(&sums)),
        )
        .await
        .map_err(|e| BackupError::Upload {
            what: "writing SHA256SUMS".into(),
            source: e.into(),
        })
}

/// Refuses to write into another target's folder: with a `pgbackup.prefix` of its own, the
/// newest committed backup there must be this target's (a prefix pointing at the folder of a
/// target that is not running, or of a target on another host, is caught here). A target in
/// its default folder, `project/service`, owns it: an intruder there is refused on its side, and
/// retention and `latest` skip what it wrote.
pub(super) async fn ensure_own_folder(
    ctx: &Ctx<'_>,
    spec: &TargetSpec,
    target: &Target,
) -> Result<(), BackupError> {
    if spec.prefix == target.target.to_string() {
        return Ok(());
    }
    let dir = layout::target_dir(ctx.store.prefix(), &spec.prefix);
    let owner = catalog::folder_owner(ctx.store, &dir)
        .await
        .map_err(|e| BackupError::Upload {
            what: format!("listing {dir}/"),
            source: e.into(),
        })?;
    match owner {
        Some(o) if o != target.target.to_string() => Err(BackupError::FolderTaken(format!(
            "{dir}/ holds the backups of target {o}: a target's folder must be its own; set another pgbackup.prefix on {} (nothing was written)",
            target.target
        ))),
        _ => Ok(()),
    }
}

/// Refuses to write into a folder that already holds anything: ids are unique per run
/// ([`BackupId::unique`]), so a non-empty folder is another writer's.
pub(super) async fn ensure_new_folder(ctx: &Ctx<'_>, dir: &str) -> Result<(), BackupError> {
    let found = catalog::keys(ctx.store, &format!("{dir}/"))
        .await
        .map_err(|e| BackupError::Upload {
            what: format!("listing {dir}/"),
            source: e.into(),
        })?;
    match found.first() {
        None => Ok(()),
        Some(k) => Err(BackupError::FolderTaken(format!(
            "the backup folder {dir}/ already holds {k} ({} objects), written by another writer; nothing was written and nothing there was touched",
            found.len()
        ))),
    }
}

/// Before the commit: every object the manifest names is stored with the size this run wrote.
/// Catches anything that overwrote or removed an object meanwhile (another writer, a lifecycle
/// rule), so a committed backup is never one whose objects differ from its manifest.
pub(super) async fn check_uploaded(
    ctx: &Ctx<'_>,
    dir: &str,
    objects: &[Object],
) -> Result<(), BackupError> {
    for o in objects {
        let key = layout::join(&[dir, &o.name]);
        let size = ctx
            .store
            .head(&key)
            .await
            .map_err(|e| BackupError::Upload {
                what: format!("checking {key} before the commit"),
                source: e.into(),
            })?;
        if size != Some(o.size) {
            return Err(BackupError::Refused(format!(
                "{key} is {} after this backup wrote {} bytes: something else wrote or removed it; the backup was not committed",
                size.map(|s| format!("{s} bytes"))
                    .unwrap_or_else(|| "missing".into()),
                o.size
            )));
        }
    }
    Ok(())
}

/// Removes everything under a failed backup's own folder: its objects and any multipart upload
/// still open. Best effort (no manifest means nothing is listed; `prune` removes what remains).
pub async fn discard(ctx: &Ctx<'_>, dir: &str) {
    let root = format!("{dir}/");
    match catalog::keys(ctx.store, &root).await {
        Ok(keys) => {
            for k in &keys {
                let _ = ctx.store.delete(k).await;
            }
        }
        Err(e) => {
            tracing::warn!(dir, error = %e, "Could not list a failed backup's objects; prune will remove them.")
        }
    }
    match ctx.store.uploads(&root).await {
        Ok(open) => {
            for u in open {
                if let Err(e) = ctx.store.abort(&u.key, &u.upload_id).await {
                    tracing::warn!(key = u.key, error = %e, "Could not abort an upload; prune will.");
                }
            }
        }
        Err(e) => {
            tracing::warn!(dir, error = %e, "Could not list a failed backup's uploads; prune will abort them.")
        }
    }
}

/// Writes `manifest.json`, last: its presence is what makes the backup exist.
pub(super) async fn commit_manifest(
    ctx: &Ctx<'_>,
    dir: &str,
    m: Manifest,
) -> Result<Manifest, BackupError> {
    check_uploaded(ctx, dir, &m.objects).await?;
    ctx.store
        .put(
            &layout::join(&[dir, layout::MANIFEST]),
            Bytes::from(m.to_json()),
        )
        .await
        .map_err(|e| BackupError::Upload {
            what: "committing manifest.json".into(),
            source: e.into(),
        })?;
    Ok(m)
}
