//! The S3 store, for AWS and S3-compatibles (Garage, MinIO, B2, R2): the only code that names
//! `aws_sdk_s3`. Small objects are one PUT; streams are multipart uploads whose parts upload
//! while the next fills, aborted on any failure (and by a guard if the writer is dropped).

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, StorageClass};
use base64::Engine;
use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use md5::Digest;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::task::JoinSet;

use super::{BoxRead, ObjectInfo, OpenUpload, Store, StoreError, UploadError};
use crate::config::S3Config;
mod client;
pub use client::*;

const MIB: usize = 1024 * 1024;
/// S3's limits: parts of at least 5 MiB (but the last), at most 10,000 of them.
pub const MAX_PARTS: u32 = 10_000;
/// S3's smallest part: the sidecar's memory holds two of them (BENCHMARKS.md: 8 MiB parts
/// made no backup faster and cost 6 MiB of peak memory).
const FIRST_PART: usize = 5 * MIB;
/// Buffers in flight (filling + uploading) stay within this while parts are small enough:
/// one part uploading while the next fills. Measured (BENCHMARKS.md): more parts in flight do
/// not speed up a dump-bound backup but cost a part each.
const BUFFER_BUDGET: usize = 10 * MIB;

/// Part size for part `n` (1-based): 5 MiB for the first 1,000 parts, doubling every 1,000
/// after, so 10,000 parts hold about 4.9 TiB while dumps under ~5 GiB (compressed) never use
/// parts larger than 5 MiB.
pub fn part_size(n: u32) -> usize {
    let doublings = (n.saturating_sub(1) / 1000).min(9);
    FIRST_PART << doublings
}

/// Parts uploading at once for a given part size: as many as fit the budget next to the one
/// being filled, at least one.
pub fn parts_in_flight(size: usize) -> usize {
    (BUFFER_BUDGET / size).saturating_sub(1).max(1)
}

/// Total bytes `parts` parts can hold.
pub fn capacity(parts: u32) -> u64 {
    (1..=parts).map(|n| part_size(n) as u64).sum()
}

/// An S3 bucket (and its endpoint, credentials and options).
#[derive(Clone)]
pub struct S3Store {
    client: Client,
    cfg: S3Config,
}

impl S3Store {
    pub async fn new(cfg: &S3Config) -> S3Store {
        S3Store {
            client: client(cfg).await,
            cfg: cfg.clone(),
        }
    }

    /// The SDK client, for end-to-end tests that fabricate S3-only states (an open multipart
    /// upload, as a killed writer leaves).
    pub fn sdk(&self) -> &Client {
        &self.client
    }

    fn classify<E: ProvideErrorMetadata + std::fmt::Debug>(
        &self,
        op: &'static str,
        err: &SdkError<E>,
    ) -> StoreError {
        classify(&self.cfg, op, err)
    }

    /// After a write of `key` timed out: if the bucket still answers, the endpoint is up but did
    /// not take the write — what a full disk looks like on some stores (Garage waits instead of
    /// answering). Other errors are returned as they are.
    async fn diagnose_write(&self, err: StoreError, key: &str) -> StoreError {
        let StoreError::Timeout { endpoint, timeout } = err else {
            return err;
        };
        let probe = self
            .client
            .head_bucket()
            .bucket(&self.cfg.bucket)
            .customize()
            .config_override(
                aws_sdk_s3::config::Builder::new()
                    .timeout_config(timeouts(self.cfg.timeout.min(Duration::from_secs(5))))
                    .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled()),
            )
            .send()
            .await;
        match probe {
            Ok(_) => StoreError::WriteStalled {
                endpoint,
                key: key.to_string(),
                timeout,
            },
            Err(_) => StoreError::Timeout { endpoint, timeout },
        }
    }

    fn content_md5(&self, data: &[u8]) -> Option<String> {
        self.cfg
            .object_lock
            .then(|| base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(data)))
    }

    /// One attempt per SDK call (we retry, in [`with_retries`]), with the size-scaled limit.
    fn single_attempt(&self, bytes: u64) -> aws_sdk_s3::config::Builder {
        aws_sdk_s3::config::Builder::new()
            .timeout_config(upload_timeouts(self.cfg.timeout, bytes))
            .retry_config(aws_sdk_s3::config::retry::RetryConfig::standard().with_max_attempts(1))
    }

    async fn put_once(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        let md5 = self.content_md5(&data);
        with_retries(|| {
            let mut req = self
                .client
                .put_object()
                .bucket(&self.cfg.bucket)
                .key(key)
                .content_length(data.len() as i64)
                .body(ByteStream::from(data.clone()));
            if let Some(m) = &md5 {
                req = req.content_md5(m);
            }
            if let Some(sc) = &self.cfg.storage_class {
                req = req.storage_class(StorageClass::from(sc.as_str()));
            }
            let over = self.single_attempt(data.len() as u64);
            async move {
                req.customize()
                    .config_override(over)
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| self.classify("PutObject", &e))
            }
        })
        .await
    }

    async fn multipart(
        &self,
        key: &str,
        reader: &mut BoxRead<'_>,
        first: Bytes,
    ) -> Result<u64, UploadError> {
        let mut create = self
            .client
            .create_multipart_upload()
            .bucket(&self.cfg.bucket)
            .key(key);
        if let Some(sc) = &self.cfg.storage_class {
            create = create.storage_class(StorageClass::from(sc.as_str()));
        }
        let upload_id = create
            .send()
            .await
            .map_err(|e| self.classify("CreateMultipartUpload", &e))?
            .upload_id
            .ok_or_else(|| {
                UploadError::Task("CreateMultipartUpload returned no upload id".into())
            })?;

        // If this future is dropped (job timeout, shutdown), the guard still aborts the upload.
        let mut guard = AbortGuard {
            store: self.clone(),
            key: key.to_string(),
            upload_id: upload_id.clone(),
            armed: true,
        };
        let result = self.upload_parts(key, &upload_id, reader, first).await;
        guard.armed = false;
        match result {
            Ok((parts, total)) => {
                self.client
                    .complete_multipart_upload()
                    .bucket(&self.cfg.bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .multipart_upload(
                        CompletedMultipartUpload::builder()
                            .set_parts(Some(parts))
                            .build(),
                    )
                    .send()
                    .await
                    .map_err(|e| self.classify("CompleteMultipartUpload", &e))?;
                Ok(total)
            }
            Err(e) => {
                let e = match e {
                    UploadError::Store(s) => UploadError::Store(self.diagnose_write(s, key).await),
                    other => other,
                };
                let _ = self.abort_retrying(key, &upload_id).await;
                Err(e)
            }
        }
    }

    /// Uploads `first` and the rest of `reader` as parts, a bounded number at once. Returns the
    /// parts in order and the bytes they hold.
    async fn upload_parts(
        &self,
        key: &str,
        upload_id: &str,
        reader: &mut BoxRead<'_>,
        first: Bytes,
    ) -> Result<(Vec<CompletedPart>, u64), UploadError> {
        let mut tasks: JoinSet<Result<CompletedPart, UploadError>> = JoinSet::new();
        let mut done = Vec::new();
        let mut number = 1u32;
        let mut data = first;
        let mut total = data.len() as u64;
        loop {
            let limit = parts_in_flight(part_size(number));
            while tasks.len() >= limit {
                done.push(join_next(&mut tasks).await?);
            }
            let (store, key2, id, n) =
                (self.clone(), key.to_string(), upload_id.to_string(), number);
            tasks.spawn(async move { store.upload_part(&key2, &id, n, data).await });
            if number == MAX_PARTS {
                // Anything left would need part 10,001.
                let more = fill(reader, 1).await.map_err(UploadError::Read)?;
                if !more.is_empty() {
                    tasks.abort_all();
                    return Err(UploadError::TooLarge);
                }
                break;
            }
            number += 1;
            let next = match fill(reader, part_size(number)).await {
                Ok(b) => b,
                Err(e) => {
                    tasks.abort_all();
                    return Err(UploadError::Read(e));
                }
            };
            if next.is_empty() {
                break;
            }
            total += next.len() as u64;
            data = next;
        }
        while !tasks.is_empty() {
            done.push(join_next(&mut tasks).await?);
        }
        done.sort_by_key(|p| p.part_number);
        Ok((done, total))
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        n: u32,
        data: Bytes,
    ) -> Result<CompletedPart, UploadError> {
        let md5 = self.content_md5(&data);
        let out = with_retries(|| {
            let mut req = self
                .client
                .upload_part()
                .bucket(&self.cfg.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(n as i32)
                .content_length(data.len() as i64)
                .body(ByteStream::from(data.clone()));
            if let Some(m) = &md5 {
                req = req.content_md5(m);
            }
            let over = self.single_attempt(data.len() as u64);
            async move {
                req.customize()
                    .config_override(over)
                    .send()
                    .await
                    .map_err(|e| self.classify("UploadPart", &e))
            }
        })
        .await?;
        Ok(CompletedPart::builder()
            .part_number(n as i32)
            .set_e_tag(out.e_tag)
            .build())
    }

    /// Aborts a multipart upload, retrying for about a minute (the endpoint may be the very
    /// thing that failed). If it still fails, `prune` removes the upload later.
    async fn abort_retrying(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        let mut delay = Duration::from_secs(1);
        let mut attempt = 1;
        loop {
            match self.abort_once(key, upload_id).await {
                Ok(()) => {
                    tracing::info!(key, "Multipart upload aborted.");
                    return Ok(());
                }
                Err(err) if attempt < 7 && err.is_transient() => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(20));
                    attempt += 1;
                }
                Err(err) => {
                    tracing::warn!(key, error = %err, "Could not abort a multipart upload; prune will remove it.");
                    return Err(err);
                }
            }
        }
    }

    async fn abort_once(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        match self
            .client
            .abort_multipart_upload()
            .bucket(&self.cfg.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => match self.classify("AbortMultipartUpload", &e) {
                // Already aborted (the drop guard and the job's clean-up both try).
                StoreError::NotFound { .. } => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn check_until(&self, deadline: tokio::time::Instant) -> Result<(), StoreError> {
        let mut delay = Duration::from_millis(500);
        loop {
            let res = self
                .client
                .head_bucket()
                .bucket(&self.cfg.bucket)
                .send()
                .await;
            let err = match res {
                Ok(_) => return Ok(()),
                Err(e) => self.classify("HeadBucket", &e),
            };
            if !err.is_transient() || tokio::time::Instant::now() + delay > deadline {
                return Err(err);
            }
            tracing::warn!(error = %err, retry_in = ?delay, "S3 not reachable yet; retrying.");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
}

#[async_trait]
impl Store for S3Store {
    fn location(&self) -> String {
        format!("s3://{}", self.cfg.bucket)
    }

    fn prefix(&self) -> &str {
        &self.cfg.prefix
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        match self.put_once(key, data).await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.diagnose_write(e, key).await),
        }
    }

    async fn upload(&self, key: &str, mut reader: BoxRead<'_>) -> Result<u64, UploadError> {
        let first = fill(&mut reader, part_size(1))
            .await
            .map_err(UploadError::Read)?;
        if first.len() < part_size(1) {
            let n = first.len() as u64;
            self.put(key, first).await?;
            return Ok(n);
        }
        self.multipart(key, &mut reader, first).await
    }

    async fn get(&self, key: &str) -> Result<(u64, BoxRead<'static>), StoreError> {
        let obj = self
            .client
            .get_object()
            .bucket(&self.cfg.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.classify("GetObject", &e))?;
        let size = obj.content_length().unwrap_or(0).max(0) as u64;
        Ok((size, Box::new(obj.body.into_async_read())))
    }

    async fn head(&self, key: &str) -> Result<Option<u64>, StoreError> {
        match self
            .client
            .head_object()
            .bucket(&self.cfg.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(h) => Ok(Some(h.content_length().unwrap_or(0).max(0) as u64)),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
            Err(e) => Err(self.classify("HeadObject", &e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let mut out = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.cfg.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.classify("ListObjectsV2", &e))?;
            out.extend(page.contents().iter().filter_map(|o| {
                Some(ObjectInfo {
                    key: o.key()?.to_string(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                    modified: o.last_modified().and_then(to_utc),
                })
            }));
        }
        Ok(out)
    }

    async fn folders(&self, dir: &str) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.cfg.bucket)
            .prefix(super::folder(dir))
            .delimiter("/")
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.classify("ListObjectsV2", &e))?;
            out.extend(page.common_prefixes().iter().filter_map(|p| {
                let p = p.prefix()?.trim_end_matches('/');
                Some(p.rsplit('/').next()?.to_string())
            }));
        }
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.client
            .delete_object()
            .bucket(&self.cfg.bucket)
            .key(key)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.classify("DeleteObject", &e))
    }

    async fn uploads(&self, prefix: &str) -> Result<Vec<OpenUpload>, StoreError> {
        let mut out = Vec::new();
        let mut marker: (Option<String>, Option<String>) = (None, None);
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.cfg.bucket)
                .prefix(prefix)
                .set_key_marker(marker.0.clone())
                .set_upload_id_marker(marker.1.clone())
                .send()
                .await
                .map_err(|e| self.classify("ListMultipartUploads", &e))?;
            for u in page.uploads() {
                if let (Some(key), Some(id)) = (u.key(), u.upload_id()) {
                    out.push(OpenUpload {
                        key: key.to_string(),
                        upload_id: id.to_string(),
                        initiated: u.initiated().and_then(to_utc),
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
        Ok(out)
    }

    async fn abort(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        self.abort_retrying(key, upload_id).await
    }

    async fn probe(&self, patience: Duration) -> Result<(), StoreError> {
        let deadline = tokio::time::Instant::now() + patience;
        let waited = tokio::time::timeout(patience, self.check_until(deadline)).await;
        waited.unwrap_or_else(|_| {
            Err(StoreError::Unreachable {
                endpoint: endpoint_of(&self.cfg),
                reason: format!("no answer within {}", humantime::format_duration(patience)),
            })
        })
    }
}

struct AbortGuard {
    store: S3Store,
    key: String,
    upload_id: String,
    armed: bool,
}

impl Drop for AbortGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (store, key, id) = (
            self.store.clone(),
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.upload_id),
        );
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = store.abort_retrying(&key, &id).await;
            });
        }
    }
}

/// Reads up to `size` bytes (less only at the end of the stream).
async fn fill(reader: &mut (impl AsyncRead + Unpin), size: usize) -> std::io::Result<Bytes> {
    let mut buf = BytesMut::with_capacity(size);
    while buf.len() < size {
        // read_buf never reads past the capacity we reserved.
        let n = reader.read_buf(&mut buf).await?;
        if n == 0 {
            break;
        }
    }
    Ok(buf.freeze())
}

async fn join_next(
    tasks: &mut JoinSet<Result<CompletedPart, UploadError>>,
) -> Result<CompletedPart, UploadError> {
    match tasks.join_next().await {
        Some(Ok(Ok(p))) => Ok(p),
        Some(Ok(Err(e))) => {
            tasks.abort_all();
            Err(e)
        }
        Some(Err(e)) => {
            tasks.abort_all();
            Err(UploadError::Task(e.to_string()))
        }
        None => Err(UploadError::Task("no part upload was running".into())),
    }
}

/// Attempts of one write: the first error that is not transient ends them at once (a full
/// storage, a refusal), so it is what the backup reports, not a later attempt's timeout.
const WRITE_ATTEMPTS: u32 = 3;

/// Runs a write up to [`WRITE_ATTEMPTS`] times with backoff while its error is transient.
async fn with_retries<T, F, Fut>(mut attempt: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut delay = Duration::from_millis(500);
    let mut n = 1;
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) if n < WRITE_ATTEMPTS && e.is_transient() => {
                tracing::debug!(error = %e, attempt = n, "S3 write failed; retrying.");
                tokio::time::sleep(delay).await;
                delay *= 4;
                n += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests;
