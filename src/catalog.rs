//! Reading what is stored: committed backups are the folders that hold a `manifest.json`.

use aws_sdk_s3::Client;
use chrono::{DateTime, Utc};

use crate::config::S3Config;
use crate::layout::{self, BackupId, Kind, MANIFEST};
use crate::manifest::Manifest;
use crate::s3::{S3Error, classify};

/// Every key under `prefix` (paginated; any number of objects).
pub async fn keys(client: &Client, cfg: &S3Config, prefix: &str) -> Result<Vec<String>, S3Error> {
    let mut out = Vec::new();
    let mut pages = client
        .list_objects_v2()
        .bucket(&cfg.bucket)
        .prefix(prefix)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| classify(cfg, "ListObjectsV2", &e))?;
        out.extend(
            page.contents()
                .iter()
                .filter_map(|o| o.key().map(String::from)),
        );
    }
    Ok(out)
}

/// The largest `manifest.json` read: real ones are a few KiB (about 300 bytes per database), so
/// anything near this is not one of ours and is refused rather than read into memory.
pub const MANIFEST_MAX: i64 = 16 << 20;

pub async fn read_manifest(client: &Client, cfg: &S3Config, key: &str) -> Result<Manifest, String> {
    let obj = client
        .get_object()
        .bucket(&cfg.bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| classify(cfg, "GetObject", &e).to_string())?;
    let len = obj.content_length().unwrap_or(0);
    if len > MANIFEST_MAX {
        return Err(format!(
            "{key} is {len} bytes, more than any manifest pgbackup writes ({MANIFEST_MAX}): not read; remove or replace it"
        ));
    }
    let body = obj
        .body
        .collect()
        .await
        .map_err(|e| format!("reading {key} failed: {e}"))?;
    let mut m = Manifest::from_json(&body.into_bytes()).map_err(|e| format!("{key}: {e}"))?;
    // The objects are where the manifest is: a backup copied or moved to another folder is
    // read there, never from the folder it was first written to.
    m.prefix = key
        .rsplit_once('/')
        .map(|(dir, _)| dir)
        .unwrap_or("")
        .to_string();
    Ok(m)
}

/// `dir/` for a non-empty folder key, `` for the bucket root.
fn folder(dir: &str) -> String {
    if dir.is_empty() {
        String::new()
    } else {
        format!("{}/", dir.trim_end_matches('/'))
    }
}

/// Keys of the manifests under `[S3_PREFIX/][target_prefix]`, with their backup ids.
pub async fn manifest_keys(
    client: &Client,
    cfg: &S3Config,
    target_prefix: Option<&str>,
) -> Result<Vec<(BackupId, String)>, S3Error> {
    let root = folder(&layout::join(&[&cfg.prefix, target_prefix.unwrap_or("")]));
    Ok(keys(client, cfg, &root)
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
    client: &Client,
    cfg: &S3Config,
    keys: &[(BackupId, String)],
) -> (Vec<Manifest>, Vec<String>) {
    let mut manifests = Vec::new();
    let mut problems = Vec::new();
    for (_, key) in keys {
        match read_manifest(client, cfg, key).await {
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
    client: &Client,
    cfg: &S3Config,
    target_prefix: Option<&str>,
) -> Result<(Vec<Manifest>, Vec<String>), S3Error> {
    let keys = manifest_keys(client, cfg, target_prefix).await?;
    Ok(read_manifests(client, cfg, &keys).await)
}

/// The backup folders directly under `dir` (committed or not), from a delimited listing: one
/// entry per backup however many objects each holds.
pub async fn folders(client: &Client, cfg: &S3Config, dir: &str) -> Result<Vec<BackupId>, S3Error> {
    let mut out = Vec::new();
    let mut pages = client
        .list_objects_v2()
        .bucket(&cfg.bucket)
        .prefix(folder(dir))
        .delimiter("/")
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| classify(cfg, "ListObjectsV2", &e))?;
        out.extend(page.common_prefixes().iter().filter_map(|p| {
            let p = p.prefix()?.trim_end_matches('/');
            p.rsplit('/').next()?.parse::<BackupId>().ok()
        }));
    }
    out.sort();
    Ok(out)
}

/// True when `key` exists.
pub async fn exists(client: &Client, cfg: &S3Config, key: &str) -> Result<bool, S3Error> {
    Ok(size_of(client, cfg, key).await?.is_some())
}

/// The stored size of `key`, `None` when there is no such object.
pub async fn size_of(client: &Client, cfg: &S3Config, key: &str) -> Result<Option<u64>, S3Error> {
    match client
        .head_object()
        .bucket(&cfg.bucket)
        .key(key)
        .send()
        .await
    {
        Ok(h) => Ok(Some(h.content_length().unwrap_or(0).max(0) as u64)),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
        Err(e) => Err(classify(cfg, "HeadObject", &e)),
    }
}

/// An open multipart upload: key, upload id, when it was started.
pub type OpenUpload = (String, String, Option<DateTime<Utc>>);

pub fn to_utc(t: &aws_sdk_s3::primitives::DateTime) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.secs(), t.subsec_nanos())
}

/// Every multipart upload still open under `prefix` (paginated).
pub async fn uploads(
    client: &Client,
    cfg: &S3Config,
    prefix: &str,
) -> Result<Vec<OpenUpload>, S3Error> {
    let mut out = Vec::new();
    let mut marker: (Option<String>, Option<String>) = (None, None);
    loop {
        let page = client
            .list_multipart_uploads()
            .bucket(&cfg.bucket)
            .prefix(prefix)
            .set_key_marker(marker.0.clone())
            .set_upload_id_marker(marker.1.clone())
            .send()
            .await
            .map_err(|e| classify(cfg, "ListMultipartUploads", &e))?;
        for u in page.uploads() {
            if let (Some(key), Some(id)) = (u.key(), u.upload_id()) {
                out.push((
                    key.to_string(),
                    id.to_string(),
                    u.initiated().and_then(to_utc),
                ));
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
    Ok(out)
}

/// The newest committed backup of `kind` in `dir` written by `target` (when given): folders
/// newest first, the first with a manifest wins (a newer backup still being written, or one that
/// failed, is skipped; so is one another target wrote into this folder).
pub async fn latest(
    client: &Client,
    cfg: &S3Config,
    dir: &str,
    kind: Kind,
    target: Option<&str>,
) -> Result<Option<Manifest>, S3Error> {
    let mut ids = folders(client, cfg, dir).await?;
    ids.retain(|id| id.kind == kind);
    for id in ids.iter().rev() {
        let key = layout::join(&[dir, &id.to_string(), MANIFEST]);
        if exists(client, cfg, &key).await? {
            let m = read_manifest(client, cfg, &key)
                .await
                .map_err(|reason| S3Error::Other {
                    op: "GetObject",
                    bucket: cfg.bucket.clone(),
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
pub async fn folder_owner(
    client: &Client,
    cfg: &S3Config,
    dir: &str,
) -> Result<Option<String>, S3Error> {
    let ids = folders(client, cfg, dir).await?;
    for id in ids.iter().rev() {
        let key = layout::join(&[dir, &id.to_string(), MANIFEST]);
        if exists(client, cfg, &key).await? {
            return Ok(read_manifest(client, cfg, &key)
                .await
                .ok()
                .map(|m| m.target));
        }
    }
    Ok(None)
}
