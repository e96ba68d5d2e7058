//! `pgctl prune`: applies retention to committed backups, removes what failed backups left
//! behind and aborts stale multipart uploads. Deleting a backup removes its manifest first, so a
//! half-deleted backup is never listed as good.

use std::collections::BTreeMap;

use aws_sdk_s3::Client;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use futures_util::StreamExt;
use serde::Serialize;

use crate::config::S3Config;
use crate::discovery::Target;
use crate::layout::{self, BackupId, Kind, MANIFEST, SUMS};
use crate::retention::{self, Decision, KeepPolicy};
use crate::s3::{S3Error, classify};

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

/// A backup folder as stored: its objects and whether it is committed.
#[derive(Debug, Clone, Default)]
struct Folder {
    keys: Vec<String>,
    committed: bool,
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
    #[serde(skip)]
    folders: BTreeMap<BackupId, Vec<String>>,
}

impl TargetPlan {
    pub fn removed(&self) -> impl Iterator<Item = &Decision> {
        self.decisions.values().flatten().filter(|d| !d.keep)
    }
}

fn to_utc(t: &aws_sdk_s3::primitives::DateTime) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.secs(), t.subsec_nanos())
}

/// Reads one target's folder and plans: retention per kind over committed backups, leftovers
/// (no manifest, nothing written for [`LEFTOVER_AGE`]) and stale multipart uploads.
pub async fn plan(
    client: &Client,
    cfg: &S3Config,
    scope: &Scope,
    min_backups: u32,
    tz: Tz,
    now: DateTime<Utc>,
) -> Result<TargetPlan, S3Error> {
    let root = format!("{}/", scope.dir);
    let mut folders: BTreeMap<BackupId, Folder> = BTreeMap::new();
    let mut pages = client
        .list_objects_v2()
        .bucket(&cfg.bucket)
        .prefix(&root)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| classify(cfg, "ListObjectsV2", &e))?;
        for o in page.contents() {
            let Some(key) = o.key() else { continue };
            // Only this target's own folders: another target's prefix may nest below it.
            let Some((dir, id, name)) = layout::parse_key(key) else {
                continue;
            };
            if dir != scope.dir {
                continue;
            }
            let f = folders.entry(id).or_default();
            f.keys.push(key.to_string());
            f.committed |= name == MANIFEST;
            let modified = o.last_modified().and_then(to_utc);
            f.newest = f.newest.max(modified);
        }
    }
    let mut decisions = BTreeMap::new();
    for kind in [Kind::Logical, Kind::Physical] {
        let ids: Vec<BackupId> = folders
            .iter()
            .filter(|(id, f)| id.kind == kind && f.committed)
            .map(|(id, _)| *id)
            .collect();
        if !ids.is_empty() {
            decisions.insert(kind, retention::plan(&ids, &scope.policy, min_backups, tz));
        }
    }
    let leftovers = folders
        .iter()
        .filter(|(_, f)| !f.committed && f.newest.is_none_or(|t| now - t > LEFTOVER_AGE))
        .map(|(id, f)| Leftover {
            id: *id,
            objects: f.keys.len(),
            last_modified: f.newest,
        })
        .collect();
    let mut stale_uploads = Vec::new();
    let mut marker: (Option<String>, Option<String>) = (None, None);
    loop {
        let page = client
            .list_multipart_uploads()
            .bucket(&cfg.bucket)
            .prefix(&root)
            .set_key_marker(marker.0.clone())
            .set_upload_id_marker(marker.1.clone())
            .send()
            .await
            .map_err(|e| classify(cfg, "ListMultipartUploads", &e))?;
        for u in page.uploads() {
            let (Some(key), Some(upload_id)) = (u.key(), u.upload_id()) else {
                continue;
            };
            if layout::parse_key(key).is_none_or(|(dir, _, _)| dir != scope.dir) {
                continue;
            }
            let initiated = u.initiated().and_then(to_utc);
            if initiated.is_none_or(|t| now - t > LEFTOVER_AGE) {
                stale_uploads.push(StaleUpload {
                    key: key.to_string(),
                    upload_id: upload_id.to_string(),
                    initiated,
                });
            }
        }
        if page.is_truncated() != Some(true) {
            break;
        }
        marker = (
            page.next_key_marker().map(String::from),
            page.next_upload_id_marker().map(String::from),
        );
        if marker.0.is_none() {
            break;
        }
    }
    Ok(TargetPlan {
        target: scope.target.clone(),
        dir: scope.dir.clone(),
        policy: format!("{} (minimum {min_backups})", scope.policy),
        decisions,
        leftovers,
        stale_uploads,
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

async fn delete(client: &Client, cfg: &S3Config, key: &str) -> Result<(), S3Error> {
    client
        .delete_object()
        .bucket(&cfg.bucket)
        .key(key)
        .send()
        .await
        .map(|_| ())
        .map_err(|e| classify(cfg, "DeleteObject", &e))
}

/// Deletes one folder: the manifest alone first, then the rest a few at a time.
async fn delete_folder(client: &Client, cfg: &S3Config, keys: Vec<String>) -> Result<(), S3Error> {
    let mut keys = deletion_order(keys).into_iter();
    let rest: Vec<String> = match keys.next() {
        Some(first) => {
            delete(client, cfg, &first).await?;
            keys.collect()
        }
        None => return Ok(()),
    };
    let results: Vec<Result<(), S3Error>> = futures_util::stream::iter(rest)
        .map(|k| async move { delete(client, cfg, &k).await })
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

/// Carries out a plan. Stops at the first S3 error (what was deleted stays deleted; a backup
/// whose manifest went is no longer listed, and its rest is a leftover for the next prune).
pub async fn execute(client: &Client, cfg: &S3Config, plan: &TargetPlan) -> Result<Done, S3Error> {
    let mut done = Done::default();
    for d in plan.removed() {
        if let Some(keys) = plan.folders.get(&d.id) {
            delete_folder(client, cfg, keys.clone()).await?;
            done.backups_deleted += 1;
        }
    }
    for l in &plan.leftovers {
        if let Some(keys) = plan.folders.get(&l.id) {
            delete_folder(client, cfg, keys.clone()).await?;
            done.leftovers_deleted += 1;
        }
    }
    for u in &plan.stale_uploads {
        client
            .abort_multipart_upload()
            .bucket(&cfg.bucket)
            .key(&u.key)
            .upload_id(&u.upload_id)
            .send()
            .await
            .map_err(|e| classify(cfg, "AbortMultipartUpload", &e))?;
        done.uploads_aborted += 1;
    }
    Ok(done)
}

/// The plan as people read it: every backup with keep/remove and why.
pub fn render(plan: &TargetPlan, tz: Tz) -> String {
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
    for u in &plan.stale_uploads {
        rows.push(vec![
            "abort".into(),
            u.key.clone(),
            u.initiated
                .map(|t| t.with_timezone(&tz).format("%Y-%m-%d %H:%M").to_string())
                .unwrap_or_default(),
            "stale multipart upload".into(),
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
        "  {kept} kept, {} removed, {} leftovers, {} stale uploads\n",
        plan.removed().count(),
        plan.leftovers.len(),
        plan.stale_uploads.len()
    ));
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
