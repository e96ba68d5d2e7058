//! Reading what is stored: committed backups are the folders that hold a `manifest.json`.

use aws_sdk_s3::Client;

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

pub async fn read_manifest(client: &Client, cfg: &S3Config, key: &str) -> Result<Manifest, String> {
    let obj = client
        .get_object()
        .bucket(&cfg.bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| classify(cfg, "GetObject", &e).to_string())?;
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
    match client
        .head_object()
        .bucket(&cfg.bucket)
        .key(key)
        .send()
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(false),
        Err(e) => Err(classify(cfg, "HeadObject", &e)),
    }
}

/// The newest committed backup of `kind` in `dir`: folders newest first, the first with a
/// manifest wins (a newer backup still being written, or one that failed, is skipped).
pub async fn latest(
    client: &Client,
    cfg: &S3Config,
    dir: &str,
    kind: Kind,
) -> Result<Option<Manifest>, S3Error> {
    let mut ids = folders(client, cfg, dir).await?;
    ids.retain(|id| id.kind == kind);
    for id in ids.iter().rev() {
        let key = layout::join(&[dir, &id.to_string(), MANIFEST]);
        if exists(client, cfg, &key).await? {
            return read_manifest(client, cfg, &key)
                .await
                .map(Some)
                .map_err(|reason| S3Error::Other {
                    op: "GetObject",
                    bucket: cfg.bucket.clone(),
                    reason,
                });
        }
    }
    Ok(None)
}
