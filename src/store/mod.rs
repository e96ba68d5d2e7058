//! Where backups are kept: the one door to storage. [`Store`] is what the rest of the crate
//! sees; [`s3::S3Store`] (the only code naming `aws_sdk_s3`), [`local::LocalStore`] (a
//! directory mounted into the sidecar) and [`memory::MemoryStore`] (unit tests) implement it.
//!
//! Keys are `/`-separated paths such as `prod/app/db/<id>/manifest.json`, the same on every
//! store. A write is all or nothing: an object is either absent or whole, so a manifest written
//! last commits a backup on every store alike.

pub mod catalog;
pub mod local;
pub mod memory;
pub mod s3;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::io::AsyncRead;

pub type BoxRead<'a> = Box<dyn AsyncRead + Unpin + Send + 'a>;

/// One stored object as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub modified: Option<DateTime<Utc>>,
}

/// A write that was started and neither finished nor aborted (an S3 multipart upload, a
/// temporary file on disk): what an interrupted writer leaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenUpload {
    pub key: String,
    pub upload_id: String,
    pub initiated: Option<DateTime<Utc>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "S3 refused access to bucket {bucket:?} at {endpoint} (HTTP {status}): check S3_ACCESS_KEY_ID / S3_SECRET_ACCESS_KEY{key} and that the key may read and write this bucket"
    )]
    AccessDenied {
        bucket: String,
        endpoint: String,
        status: u16,
        key: String,
    },
    #[error("bucket {bucket:?} does not exist at {endpoint}: create it or fix S3_BUCKET")]
    NoSuchBucket { bucket: String, endpoint: String },
    #[error("{op} on {location}: no such object")]
    NotFound { op: &'static str, location: String },
    #[error(
        "the storage at {endpoint} refused the write for lack of space ({reason}): free space or raise the quota, then run the backup again"
    )]
    NoSpace { endpoint: String, reason: String },
    #[error(
        "cannot reach S3 at {endpoint}: no answer within S3_TIMEOUT ({timeout}); check S3_ENDPOINT and the network"
    )]
    Timeout { endpoint: String, timeout: String },
    #[error(
        "the storage at {endpoint} answers but did not accept the write of {key} within S3_TIMEOUT ({timeout}): it may be out of space or over quota; check its free space, then run the backup again"
    )]
    WriteStalled {
        endpoint: String,
        key: String,
        timeout: String,
    },
    #[error("cannot reach S3 at {endpoint}: {reason}; check S3_ENDPOINT and the network")]
    Unreachable { endpoint: String, reason: String },
    #[error("{op} on {location} failed: {reason}")]
    Other {
        op: &'static str,
        location: String,
        reason: String,
    },
    /// The local destination: a file system error, with the path and what to do.
    #[error("{op} {path}: {reason}")]
    Local {
        op: &'static str,
        path: String,
        reason: String,
    },
}

impl StoreError {
    /// Transient errors are worth retrying; a refusal or a missing bucket is not.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Unreachable { .. } | StoreError::Timeout { .. }
        )
    }
}

/// A streamed write that failed.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("reading the backup stream failed: {0}")]
    Read(#[source] std::io::Error),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("the stream is larger than {} parts can hold", s3::MAX_PARTS)]
    TooLarge,
    #[error("upload task failed: {0}")]
    Task(String),
}

/// The operations backup, restore, verify and prune need from storage.
#[async_trait]
pub trait Store: Send + Sync {
    /// Where the keys live, for messages: `s3://bucket` or the directory.
    fn location(&self) -> String;
    /// The key prefix every target folder is under (`S3_PREFIX`; empty on a directory).
    fn prefix(&self) -> &str;
    /// Writes a small object in one request.
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError>;
    /// Streams `reader` into `key` with bounded memory. On any failure, or if the future is
    /// dropped, nothing is left under `key` (an interrupted write is at most an open upload).
    /// Returns the bytes written.
    async fn upload(&self, key: &str, reader: BoxRead<'_>) -> Result<u64, UploadError>;
    /// Opens `key` for reading: its size and its bytes.
    async fn get(&self, key: &str) -> Result<(u64, BoxRead<'static>), StoreError>;
    /// The size of `key`, `None` when there is no such object.
    async fn head(&self, key: &str) -> Result<Option<u64>, StoreError>;
    /// Every object whose key starts with `prefix`.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError>;
    /// The names of the folders directly under `dir` that hold at least one object.
    async fn folders(&self, dir: &str) -> Result<Vec<String>, StoreError>;
    /// Deletes `key`; a missing key is not an error.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// Writes started under `prefix` and not finished.
    async fn uploads(&self, prefix: &str) -> Result<Vec<OpenUpload>, StoreError>;
    /// Removes an open upload; one already gone is not an error.
    async fn abort(&self, key: &str, upload_id: &str) -> Result<(), StoreError>;
    /// Checks that the store is there and may be written, waiting up to `patience` for one
    /// that is still starting.
    async fn probe(&self, patience: std::time::Duration) -> Result<(), StoreError>;
}

pub type SharedStore = Arc<dyn Store>;

/// Opens the configured destination.
pub async fn open(dest: &crate::config::Destination) -> SharedStore {
    match dest {
        crate::config::Destination::S3(cfg) => Arc::new(s3::S3Store::new(cfg).await),
        crate::config::Destination::Local(root) => Arc::new(local::LocalStore::new(root.clone())),
    }
}

/// `dir/` for a non-empty folder key, `` for the root.
pub fn folder(dir: &str) -> String {
    if dir.is_empty() {
        String::new()
    } else {
        format!("{}/", dir.trim_end_matches('/'))
    }
}

/// Reads a whole small object (`what`: a manifest, a `SHA256SUMS`), refusing one larger than
/// `max` bytes rather than reading it into memory.
pub async fn read_small(
    store: &dyn Store,
    key: &str,
    max: u64,
    what: &str,
) -> Result<Bytes, String> {
    use tokio::io::AsyncReadExt;
    let (size, body) = store.get(key).await.map_err(|e| e.to_string())?;
    if size > max {
        return Err(format!(
            "{key} is {size} bytes, more than any {what} pgbackup writes ({max}): not read; remove or replace it"
        ));
    }
    let mut buf = Vec::with_capacity(size as usize);
    body.take(max + 1)
        .read_to_end(&mut buf)
        .await
        .map_err(|e| format!("reading {key} failed: {e}"))?;
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests;
