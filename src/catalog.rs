//! Reading what is stored: committed backups are the folders that hold a `manifest.json`.

use aws_sdk_s3::Client;

use crate::config::S3Config;
use crate::layout::{self, MANIFEST};
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
    Manifest::from_json(&body.into_bytes()).map_err(|e| format!("{key}: {e}"))
}

/// Committed backups under `[S3_PREFIX/][target_prefix]`, oldest first. Unreadable manifests
/// are reported, not fatal.
pub async fn committed(
    client: &Client,
    cfg: &S3Config,
    target_prefix: Option<&str>,
) -> Result<(Vec<Manifest>, Vec<String>), S3Error> {
    let root = layout::join(&[&cfg.prefix, target_prefix.unwrap_or("")]);
    let root = if root.is_empty() {
        root
    } else {
        format!("{root}/")
    };
    let mut manifests = Vec::new();
    let mut problems = Vec::new();
    for key in keys(client, cfg, &root).await? {
        if layout::parse_key(&key).is_some_and(|(_, _, name)| name == MANIFEST) {
            match read_manifest(client, cfg, &key).await {
                Ok(m) => manifests.push(m),
                Err(e) => problems.push(e),
            }
        }
    }
    manifests.sort_by(|a, b| (a.backup_id, &a.target).cmp(&(b.backup_id, &b.target)));
    Ok((manifests, problems))
}
