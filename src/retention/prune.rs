//! `pgctl prune`: applies retention to committed backups, removes what failed backups left
//! behind and aborts stale uploads (S3 multipart uploads, temporary files in a directory). Deleting a backup removes its manifest first, so a
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
    /// The ids of the backups deleted.
    pub deleted: Vec<String>,
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
            done.deleted.push(d.id.to_string());
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
    for l in crate::table::lines(&rows) {
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
    use crate::store::memory::MemoryStore;
    use chrono::TimeZone;

    const DIR: &str = "shop/db";

    fn id(day: u32, tag: u32) -> BackupId {
        BackupId::tagged(
            Utc.with_ymd_and_hms(2026, 11, day, 3, 0, 0).unwrap(),
            Kind::Logical,
            tag,
        )
    }

    /// A committed backup of `target` written on `day` (its objects dated then too).
    fn commit(store: &MemoryStore, target: &str, id: BackupId) {
        let m = Manifest::sample(target, DIR, id);
        let dir = format!("{DIR}/{id}");
        store.insert_at(&format!("{dir}/app.dump.zst"), b"abc", id.time);
        store.insert_at(&format!("{dir}/{SUMS}"), b"sums", id.time);
        store.insert_at(
            &format!("{dir}/{MANIFEST}"),
            m.to_json().as_bytes(),
            id.time,
        );
    }

    fn scope(last: u32) -> Scope {
        Scope {
            target: "shop/db".into(),
            dir: DIR.into(),
            policy: KeepPolicy {
                last: Some(last),
                ..Default::default()
            },
        }
    }

    /// Retention, leftovers and stale uploads carried out over a store, as the runner and
    /// `pgctl prune` do: what goes is exactly what the plan says, manifest first.
    #[tokio::test]
    async fn prune_executes_its_plan_and_keeps_what_it_cannot_judge() {
        let store = MemoryStore::new();
        let now = Utc.with_ymd_and_hms(2026, 11, 20, 12, 0, 0).unwrap();
        for day in [10, 12, 14, 16] {
            commit(&store, "shop/db", id(day, day));
        }
        // Not counted, not removed: an unreadable manifest, another target's backup.
        let broken = id(17, 0xb0);
        store.insert_at(
            &format!("{DIR}/{broken}/{MANIFEST}"),
            b"{not json",
            broken.time,
        );
        commit(&store, "other/db", id(18, 0x07));
        // Leftovers: an old folder without a manifest goes, a fresh one (a running backup) stays.
        let old_left = id(11, 0x11);
        store.insert_at(
            &format!("{DIR}/{old_left}/app.dump.zst"),
            b"x",
            old_left.time,
        );
        let young_left = BackupId::tagged(now - chrono::Duration::minutes(5), Kind::Logical, 0x22);
        store.insert_at(&format!("{DIR}/{young_left}/app.dump.zst"), b"x", now);
        // Uploads: an old one is aborted, a fresh one is left to its writer.
        store.insert_upload(
            &format!("{DIR}/{old_left}/big.dump.zst"),
            "u-old",
            id(11, 0).time,
        );
        store.insert_upload(&format!("{DIR}/{young_left}/big.dump.zst"), "u-new", now);

        let plan = plan(&store, &scope(2), 1, Tz::UTC, now).await.unwrap();
        let mut removed: Vec<BackupId> = plan.removed().map(|d| d.id).collect();
        removed.sort();
        assert_eq!(removed, [id(10, 10), id(12, 12)]);
        assert_eq!(plan.unusable.len(), 2, "{:?}", plan.unusable);
        assert_eq!(
            plan.leftovers.iter().map(|l| l.id).collect::<Vec<_>>(),
            [old_left]
        );
        assert_eq!(plan.young_leftovers.len(), 1);
        assert_eq!(plan.stale_uploads.len(), 1);
        assert_eq!(plan.stale_uploads[0].upload_id, "u-old");
        assert_eq!(plan.open_uploads.len(), 1);

        let done = execute(&store, &plan).await.unwrap();
        assert_eq!(
            (
                done.backups_deleted,
                done.leftovers_deleted,
                done.uploads_aborted
            ),
            (2, 1, 1)
        );
        let keys = store.keys();
        for gone in [id(10, 10), id(12, 12), old_left] {
            assert!(
                !keys.iter().any(|k| k.contains(&gone.to_string())),
                "{gone}: {keys:?}"
            );
        }
        for kept in [id(14, 14), id(16, 16), broken, id(18, 0x07), young_left] {
            assert!(
                keys.iter().any(|k| k.contains(&kept.to_string())),
                "{kept}: {keys:?}"
            );
        }
        let open = store.uploads("").await.unwrap();
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].upload_id, "u-new");
    }

    /// A deletion that fails part-way leaves no backup listed whose objects are gone: the
    /// manifest goes first, and the next prune removes the rest as a leftover.
    #[tokio::test]
    async fn a_prune_cut_off_mid_folder_leaves_nothing_listed_that_is_incomplete() {
        let store = MemoryStore::new();
        let now = Utc.with_ymd_and_hms(2026, 11, 20, 12, 0, 0).unwrap();
        for day in [10, 12] {
            commit(&store, "shop/db", id(day, day));
        }
        let plan = plan(&store, &scope(1), 1, Tz::UTC, now).await.unwrap();
        // Deletes fail once the manifest is gone: the store stops answering.
        *store.fail_deletes_after.lock().unwrap() = Some(1);
        assert!(execute(&store, &plan).await.is_err());
        *store.fail_deletes_after.lock().unwrap() = None;
        let (listed, problems) = crate::store::catalog::committed(&store, Some(DIR))
            .await
            .unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            listed.iter().map(|m| m.backup_id).collect::<Vec<_>>(),
            [id(12, 12)]
        );
        let again = super::plan(&store, &scope(1), 1, Tz::UTC, now)
            .await
            .unwrap();
        assert_eq!(again.leftovers.len(), 1, "the rest is an old leftover now");
        execute(&store, &again).await.unwrap();
        assert!(
            store
                .keys()
                .iter()
                .all(|k| k.contains(&id(12, 12).to_string()))
        );
    }

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
