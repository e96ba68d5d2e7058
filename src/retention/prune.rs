//! `pgctl prune`: applies retention to committed backups, removes what failed backups left
//! behind and aborts stale multipart uploads. Deleting a backup removes its manifest first, so a
//! half-deleted backup is never listed as good.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use futures_util::StreamExt;
use serde::Serialize;

use crate::discovery::Target;
use crate::model::KeepPolicy;
use crate::model::layout::{self, BackupId, Kind, MANIFEST, SUMS};
use crate::model::manifest::Manifest;
use crate::retention::{self, Decision};
use crate::store::catalog;
use crate::store::{Store, StoreError};

/// Uncommitted leftovers and multipart uploads younger than this may belong to a backup that is
/// still running; they are left alone.
pub const LEFTOVER_AGE: chrono::Duration = chrono::Duration::days(1);

/// One target's folder and the policy that applies to it.
#[derive(Debug, Clone)]
pub struct Scope {
    pub target: String,
    pub dir: String,
    pub policy: KeepPolicy,
}

/// The scope of a valid target: its folder and its policy (labels over environment defaults).
pub fn scope_of(target: &Target, s3_prefix: &str) -> Option<Scope> {
    let spec = target.settings()?;
    Some(Scope {
        target: target.target.to_string(),
        dir: layout::target_dir(s3_prefix, &spec.prefix),
        policy: spec.keep.clone(),
    })
}

/// A backup folder as stored: its objects and whether it has a manifest.
#[derive(Debug, Clone, Default)]
struct Folder {
    keys: Vec<String>,
    has_manifest: bool,
    newest: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Leftover {
    pub id: BackupId,
    pub objects: usize,
    pub last_modified: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StaleUpload {
    pub key: String,
    pub upload_id: String,
    pub initiated: Option<DateTime<Utc>>,
}

/// A folder with a `manifest.json` that does not make a usable backup of this target: kept,
/// reported, never counted by retention (so it can never be the reason a good one goes).
#[derive(Debug, Clone, Serialize)]
pub struct Unusable {
    pub id: BackupId,
    pub reason: String,
}

/// What prune will do to one target.
#[derive(Debug, Clone, Serialize)]
pub struct TargetPlan {
    pub target: String,
    pub dir: String,
    pub policy: String,
    /// Per kind, newest first.
    pub decisions: BTreeMap<Kind, Vec<Decision>>,
    pub leftovers: Vec<Leftover>,
    pub stale_uploads: Vec<StaleUpload>,
    /// Kept and reported: manifests that cannot be read, belong to another target or name
    /// objects that are missing.
    pub unusable: Vec<Unusable>,
    /// Kept and reported: uncommitted folders and open uploads younger than [`LEFTOVER_AGE`]
    /// (a backup may still be writing them).
    pub young_leftovers: Vec<Leftover>,
    pub open_uploads: Vec<StaleUpload>,
    #[serde(skip)]
    folders: BTreeMap<BackupId, Vec<String>>,
}

impl TargetPlan {
    pub fn removed(&self) -> impl Iterator<Item = &Decision> {
        self.decisions.values().flatten().filter(|d| !d.keep)
    }
}

/// Why the manifest of folder `id` does not make a backup of `target` that retention may count;
/// `None` when it does.
fn unusable_reason(m: &Manifest, target: &str, id: &BackupId, keys: &[String]) -> Option<String> {
    if m.target != target {
        return Some(format!(
            "written by target {} (this folder is {target}'s): not counted, not removed",
            m.target
        ));
    }
    if m.backup_id != *id {
        return Some(format!(
            "its manifest names backup {}: a copied or renamed folder; not counted",
            m.backup_id
        ));
    }
    let names: BTreeSet<&str> = keys.iter().filter_map(|k| k.rsplit('/').next()).collect();
    let missing: Vec<&str> = m
        .objects
        .iter()
        .map(|o| o.name.as_str())
        .filter(|n| !names.contains(n))
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "objects missing: {}; not counted (verify it, then remove by hand)",
            missing.join(", ")
        )
    })
}

/// Reads one target's folder and plans: retention per kind over its usable backups, leftovers
/// (no manifest, nothing written for [`LEFTOVER_AGE`]) and stale multipart uploads. Every
/// manifest is read: only one that parses, names this target and whose objects exist counts.
pub async fn plan(
    store: &dyn Store,
    scope: &Scope,
    min_backups: u32,
    tz: Tz,
    now: DateTime<Utc>,
) -> Result<TargetPlan, StoreError> {
    let root = format!("{}/", scope.dir);
    let mut folders: BTreeMap<BackupId, Folder> = BTreeMap::new();
    for o in store.list(&root).await? {
        // Only this target's own folders: another target's prefix may nest below it.
        let Some((dir, id, name)) = layout::parse_key(&o.key) else {
            continue;
        };
        if dir != scope.dir {
            continue;
        }
        let f = folders.entry(id).or_default();
        f.has_manifest |= name == MANIFEST;
        f.newest = f.newest.max(o.modified);
        f.keys.push(o.key);
    }
    let mut usable = BTreeSet::new();
    let mut unusable = Vec::new();
    for (id, f) in folders.iter().filter(|(_, f)| f.has_manifest) {
        let key = layout::join(&[&scope.dir, &id.to_string(), MANIFEST]);
        let reason = match catalog::read_manifest(store, &key).await {
            Ok(m) => unusable_reason(&m, &scope.target, id, &f.keys),
            Err(e) => Some(format!("manifest unreadable ({e}); not counted")),
        };
        match reason {
            None => {
                usable.insert(*id);
            }
            Some(reason) => unusable.push(Unusable { id: *id, reason }),
        }
    }
    let mut decisions = BTreeMap::new();
    for kind in [Kind::Logical, Kind::Physical] {
        let ids: Vec<BackupId> = usable
            .iter()
            .filter(|id| id.kind == kind)
            .copied()
            .collect();
        if !ids.is_empty() {
            decisions.insert(kind, retention::plan(&ids, &scope.policy, min_backups, tz));
        }
    }
    let old = |t: Option<DateTime<Utc>>| t.is_none_or(|t| now - t > LEFTOVER_AGE);
    let (leftovers, young_leftovers): (Vec<Leftover>, Vec<Leftover>) = folders
        .iter()
        .filter(|(_, f)| !f.has_manifest)
        .map(|(id, f)| Leftover {
            id: *id,
            objects: f.keys.len(),
            last_modified: f.newest,
        })
        .partition(|l| old(l.last_modified));
    let (stale_uploads, open_uploads): (Vec<StaleUpload>, Vec<StaleUpload>) = store
        .uploads(&root)
        .await?
        .into_iter()
        .filter(|u| layout::parse_key(&u.key).is_some_and(|(dir, _, _)| dir == scope.dir))
        .map(|u| StaleUpload {
            key: u.key,
            upload_id: u.upload_id,
            initiated: u.initiated,
        })
        .partition(|u| old(u.initiated));
    Ok(TargetPlan {
        target: scope.target.clone(),
        dir: scope.dir.clone(),
        policy: format!("{} (minimum {min_backups})", scope.policy),
        decisions,
        leftovers,
        stale_uploads,
        unusable,
        young_leftovers,
        open_uploads,
        folders: folders.into_iter().map(|(id, f)| (id, f.keys)).collect(),
    })
}

/// Deletion order inside a folder: manifest first (the backup stops being listed), then
/// `SHA256SUMS`, then the objects.
fn deletion_order(mut keys: Vec<String>) -> Vec<String> {
    let rank = |k: &str| match k.rsplit('/').next() {
        Some(MANIFEST) => 0,
        Some(SUMS) => 1,
        _ => 2,
    };
    keys.sort_by_key(|k| (rank(k), k.clone()));
    keys
}

/// Deletes one folder: the manifest alone first, then the rest a few at a time.
async fn delete_folder(store: &dyn Store, keys: Vec<String>) -> Result<(), StoreError> {
    let mut keys = deletion_order(keys).into_iter();
    let rest: Vec<String> = match keys.next() {
        Some(first) => {
            store.delete(&first).await?;
            keys.collect()
        }
        None => return Ok(()),
    };
    let results: Vec<Result<(), StoreError>> = futures_util::stream::iter(rest)
        .map(|k| async move { store.delete(&k).await })
        .buffer_unordered(16)
        .collect()
        .await;
    results.into_iter().collect()
}

/// What a prune did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Done {
    pub backups_deleted: usize,
    pub leftovers_deleted: usize,
    pub uploads_aborted: usize,
}

/// Carries out a plan. Stops at the first storage error (what was deleted stays deleted; a backup
/// whose manifest went is no longer listed, and its rest is a leftover for the next prune).
pub async fn execute(store: &dyn Store, plan: &TargetPlan) -> Result<Done, StoreError> {
    let mut done = Done::default();
    for d in plan.removed() {
        if let Some(keys) = plan.folders.get(&d.id) {
            delete_folder(store, keys.clone()).await?;
            done.backups_deleted += 1;
        }
    }
    for l in &plan.leftovers {
        if let Some(keys) = plan.folders.get(&l.id) {
            delete_folder(store, keys.clone()).await?;
            done.leftovers_deleted += 1;
        }
    }
    for u in &plan.stale_uploads {
        store.abort(&u.key, &u.upload_id).await?;
        done.uploads_aborted += 1;
    }
    Ok(done)
}

/// The plan as people read it: every backup with keep/remove and why.
pub fn render(plan: &TargetPlan, tz: Tz, now: DateTime<Utc>) -> String {
    let mut out = format!("{} ({}/) — {}\n", plan.target, plan.dir, plan.policy);
    let mut rows = vec![vec![
        "ACTION".to_string(),
        "BACKUP".into(),
        format!("TIME ({tz})"),
        "REASONS".into(),
    ]];
    for ds in plan.decisions.values() {
        for d in ds {
            rows.push(vec![
                if d.keep { "keep" } else { "remove" }.to_string(),
                d.id.to_string(),
                d.id.time
                    .with_timezone(&tz)
                    .format("%Y-%m-%d %H:%M")
                    .to_string(),
                d.reasons.join(", "),
            ]);
        }
    }
    for l in &plan.leftovers {
        rows.push(vec![
            "remove".into(),
            l.id.to_string(),
            l.id.time
                .with_timezone(&tz)
                .format("%Y-%m-%d %H:%M")
                .to_string(),
            format!("uncommitted leftover ({} objects)", l.objects),
        ]);
    }
    let when = |t: Option<DateTime<Utc>>| {
        t.map(|t| t.with_timezone(&tz).format("%Y-%m-%d %H:%M").to_string())
            .unwrap_or_default()
    };
    for u in &plan.stale_uploads {
        rows.push(vec![
            "abort".into(),
            u.key.clone(),
            when(u.initiated),
            "stale upload (an interrupted write)".into(),
        ]);
    }
    for x in &plan.unusable {
        rows.push(vec![
            "keep".into(),
            x.id.to_string(),
            when(Some(x.id.time)),
            x.reason.clone(),
        ]);
    }
    let age = |t: Option<DateTime<Utc>>| {
        t.map(|t| {
            let secs = (now - t).num_seconds().max(0) as u64;
            humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
        })
        .unwrap_or_else(|| "unknown age".into())
    };
    for l in &plan.young_leftovers {
        rows.push(vec![
            "keep".into(),
            l.id.to_string(),
            when(l.last_modified),
            format!(
                "uncommitted, {} objects, {} old: may be a backup still running (removed once a day old)",
                l.objects,
                age(l.last_modified),
            ),
        ]);
    }
    for u in &plan.open_uploads {
        rows.push(vec![
            "keep".into(),
            u.key.clone(),
            when(u.initiated),
            format!(
                "open upload, {} old: may be a backup still running",
                age(u.initiated)
            ),
        ]);
    }
    if rows.len() == 1 {
        out.push_str("  (no backups)\n");
        return out;
    }
    for l in crate::app::table::lines(&rows) {
        out.push_str("  ");
        out.push_str(&l);
        out.push('\n');
    }
    let kept = plan.decisions.values().flatten().filter(|d| d.keep).count();
    out.push_str(&format!(
        "  {kept} kept, {} removed, {} leftovers, {} stale uploads",
        plan.removed().count(),
        plan.leftovers.len(),
        plan.stale_uploads.len()
    ));
    if !plan.unusable.is_empty() {
        out.push_str(&format!(
            ", {} unusable (kept, not counted)",
            plan.unusable.len()
        ));
    }
    if !plan.young_leftovers.is_empty() || !plan.open_uploads.is_empty() {
        out.push_str(&format!(
            ", {} young leftovers and {} open uploads (kept)",
            plan.young_leftovers.len(),
            plan.open_uploads.len()
        ));
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_goes_first() {
        let keys = vec![
            "t/x/app.dump.zst".to_string(),
            "t/x/SHA256SUMS".into(),
            "t/x/globals.sql.zst".into(),
            "t/x/manifest.json".into(),
        ];
        assert_eq!(
            deletion_order(keys),
            [
                "t/x/manifest.json",
                "t/x/SHA256SUMS",
                "t/x/app.dump.zst",
                "t/x/globals.sql.zst"
            ]
        );
    }
}
