//! The streaming pipeline: bytes → compression → SHA-256 + byte count → S3 multipart upload.
//! No temporary files; memory is bounded by the part buffers, whose number shrinks as they grow.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use async_compression::Level;
use async_compression::tokio::bufread::{GzipEncoder, ZstdEncoder};
use async_compression::zstd::CParameter;
use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, StorageClass};
use base64::Engine;
use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, BufReader, ReadBuf};
use tokio::task::JoinSet;

use crate::config::S3Config;
use crate::labels::Compression;
use crate::s3::{S3Error, classify};

const MIB: usize = 1024 * 1024;
/// S3's limits: parts of at least 5 MiB (but the last), at most 10,000 of them.
pub const MAX_PARTS: u32 = 10_000;
const FIRST_PART: usize = 8 * MIB;
/// Buffers in flight (filling + uploading) stay within this while parts are small enough:
/// one 8 MiB part uploading while the next fills. Measured (BENCHMARKS.md): more parts in
/// flight do not speed up a dump-bound backup but cost 8 MiB each.
const BUFFER_BUDGET: usize = 16 * MIB;
/// zstd job size per worker thread: small jobs keep the compressor's own buffers at a few MiB
/// per worker (its default for level 3 is 8 MiB of input plus output per job).
const ZSTD_JOB: u32 = 1024 * 1024;

/// Part size for part `n` (1-based): 8 MiB for the first 1,000 parts, doubling every 1,000
/// after, so 10,000 parts hold about 8 TiB while dumps under ~8 GiB (compressed) never use
/// parts larger than 8 MiB.
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

/// Wraps a reader, counting the bytes that pass.
pub struct Counting<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R> Counting<R> {
    pub fn new(inner: R) -> (Counting<R>, Arc<AtomicU64>) {
        let count = Arc::new(AtomicU64::new(0));
        (
            Counting {
                inner,
                count: count.clone(),
            },
            count,
        )
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Counting<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &r {
            self.count
                .fetch_add((buf.filled().len() - before) as u64, Ordering::Relaxed);
        }
        r
    }
}

pub type BoxRead<'a> = Box<dyn AsyncRead + Unpin + Send + 'a>;

/// Compresses `input` as configured. zstd uses its own worker threads (one per core, at most
/// four), so compression does not hold back the dump, and writes frame checksums.
pub fn compress<'a>(input: impl AsyncRead + Unpin + Send + 'a, c: Compression) -> BoxRead<'a> {
    let buffered = BufReader::with_capacity(256 * 1024, input);
    match c {
        Compression::Zstd(level) => {
            let workers = std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .min(4) as u32;
            Box::new(ZstdEncoder::with_quality_and_params(
                buffered,
                Level::Precise(level),
                &[
                    CParameter::nb_workers(workers),
                    CParameter::job_size(ZSTD_JOB),
                    CParameter::checksum_flag(true),
                ],
            ))
        }
        Compression::Gzip(level) => Box::new(GzipEncoder::with_quality(
            buffered,
            Level::Precise(level as i32),
        )),
        Compression::None => Box::new(buffered),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("reading the backup stream failed: {0}")]
    Read(#[source] std::io::Error),
    #[error("{0}")]
    S3(#[from] S3Error),
    #[error("the stream is larger than {MAX_PARTS} parts can hold")]
    TooLarge,
    #[error("upload task failed: {0}")]
    Task(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    pub size: u64,
    pub sha256: String,
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

fn content_md5(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(data))
}

/// Streams `reader` into `key`. Small objects (one part) are a single PUT; larger ones a
/// multipart upload that is aborted on any failure, so nothing half-written remains.
pub async fn upload(
    client: &Client,
    cfg: &S3Config,
    key: &str,
    mut reader: impl AsyncRead + Unpin,
) -> Result<Uploaded, UploadError> {
    let mut sha = Sha256::new();
    let mut total = 0u64;
    let first = fill(&mut reader, part_size(1))
        .await
        .map_err(UploadError::Read)?;
    sha.update(&first);
    total += first.len() as u64;
    if first.len() < part_size(1) {
        put(client, cfg, key, first).await?;
        return Ok(Uploaded {
            size: total,
            sha256: hex::encode(sha.finalize()),
        });
    }

    let mut create = client
        .create_multipart_upload()
        .bucket(&cfg.bucket)
        .key(key);
    if let Some(sc) = &cfg.storage_class {
        create = create.storage_class(StorageClass::from(sc.as_str()));
    }
    let upload_id = create
        .send()
        .await
        .map_err(|e| classify(cfg, "CreateMultipartUpload", &e))?
        .upload_id
        .ok_or_else(|| UploadError::Task("CreateMultipartUpload returned no upload id".into()))?;

    // If this future is dropped (job timeout, shutdown), the guard still aborts the upload.
    let mut guard = AbortGuard {
        client: client.clone(),
        cfg: cfg.clone(),
        key: key.to_string(),
        upload_id: upload_id.clone(),
        armed: true,
    };
    let result = upload_parts(
        client,
        cfg,
        key,
        &upload_id,
        &mut reader,
        first,
        &mut sha,
        &mut total,
    )
    .await;
    guard.armed = false;
    match result {
        Ok(parts) => {
            client
                .complete_multipart_upload()
                .bucket(&cfg.bucket)
                .key(key)
                .upload_id(&upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| classify(cfg, "CompleteMultipartUpload", &e))?;
            Ok(Uploaded {
                size: total,
                sha256: hex::encode(sha.finalize()),
            })
        }
        Err(e) => {
            let e = match e {
                UploadError::S3(s3) => UploadError::S3(s3.diagnose_write(client, cfg, key).await),
                other => other,
            };
            abort(client, cfg, key, &upload_id).await;
            Err(e)
        }
    }
}

struct AbortGuard {
    client: Client,
    cfg: S3Config,
    key: String,
    upload_id: String,
    armed: bool,
}

impl Drop for AbortGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (client, cfg, key, id) = (
            self.client.clone(),
            self.cfg.clone(),
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.upload_id),
        );
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { abort(&client, &cfg, &key, &id).await });
        }
    }
}

/// Aborts a multipart upload, retrying for about a minute (the endpoint may be the very thing
/// that failed). If it still fails, `prune` removes the upload later.
pub async fn abort(client: &Client, cfg: &S3Config, key: &str, upload_id: &str) {
    let mut delay = std::time::Duration::from_secs(1);
    for attempt in 1..=7 {
        match client
            .abort_multipart_upload()
            .bucket(&cfg.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
        {
            Ok(_) => {
                tracing::info!(key, "Multipart upload aborted.");
                return;
            }
            Err(e) => {
                let err = classify(cfg, "AbortMultipartUpload", &e);
                if matches!(err, S3Error::NotFound { .. }) {
                    return; // already aborted (the drop guard and the job's clean-up both try)
                }
                if attempt == 7 || !err.is_transient() {
                    tracing::warn!(key, error = %err, "Could not abort a multipart upload; prune will remove it.");
                    return;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(20));
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn upload_parts(
    client: &Client,
    cfg: &S3Config,
    key: &str,
    upload_id: &str,
    reader: &mut (impl AsyncRead + Unpin),
    first: Bytes,
    sha: &mut Sha256,
    total: &mut u64,
) -> Result<Vec<CompletedPart>, UploadError> {
    let mut tasks: JoinSet<Result<CompletedPart, UploadError>> = JoinSet::new();
    let mut done = Vec::new();
    let mut number = 1u32;
    let mut data = first;
    loop {
        let limit = parts_in_flight(part_size(number));
        while tasks.len() >= limit {
            done.push(join_next(&mut tasks).await?);
        }
        let (client, cfg2, key2, id) = (
            client.clone(),
            cfg.clone(),
            key.to_string(),
            upload_id.to_string(),
        );
        let md5 = cfg.object_lock.then(|| content_md5(&data));
        let n = number;
        tasks.spawn(async move {
            let out = with_retries(|| {
                let mut req = client
                    .upload_part()
                    .bucket(&cfg2.bucket)
                    .key(&key2)
                    .upload_id(&id)
                    .part_number(n as i32)
                    .content_length(data.len() as i64)
                    .body(ByteStream::from(data.clone()));
                if let Some(m) = &md5 {
                    req = req.content_md5(m);
                }
                let (client_cfg, len) = (&cfg2, data.len() as u64);
                async move {
                    req.customize()
                        .config_override(single_attempt(client_cfg, len))
                        .send()
                        .await
                        .map_err(|e| classify(client_cfg, "UploadPart", &e))
                }
            })
            .await?;
            Ok(CompletedPart::builder()
                .part_number(n as i32)
                .set_e_tag(out.e_tag)
                .build())
        });
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
        let next = fill(reader, part_size(number))
            .await
            .map_err(UploadError::Read);
        let next = match next {
            Ok(b) => b,
            Err(e) => {
                tasks.abort_all();
                return Err(e);
            }
        };
        if next.is_empty() {
            break;
        }
        sha.update(&next);
        *total += next.len() as u64;
        data = next;
    }
    while !tasks.is_empty() {
        done.push(join_next(&mut tasks).await?);
    }
    done.sort_by_key(|p| p.part_number);
    Ok(done)
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

/// A single PUT of a small object (also SHA256SUMS and manifest.json).
pub async fn put(client: &Client, cfg: &S3Config, key: &str, data: Bytes) -> Result<(), S3Error> {
    let md5 = cfg.object_lock.then(|| content_md5(&data));
    let result = with_retries(|| {
        let mut req = client
            .put_object()
            .bucket(&cfg.bucket)
            .key(key)
            .content_length(data.len() as i64)
            .body(ByteStream::from(data.clone()));
        if let Some(m) = &md5 {
            req = req.content_md5(m);
        }
        if let Some(sc) = &cfg.storage_class {
            req = req.storage_class(StorageClass::from(sc.as_str()));
        }
        let len = data.len() as u64;
        async move {
            req.customize()
                .config_override(single_attempt(cfg, len))
                .send()
                .await
                .map_err(|e| classify(cfg, "PutObject", &e))
        }
    })
    .await;
    match result {
        Ok(_) => Ok(()),
        Err(e) => Err(e.diagnose_write(client, cfg, key).await),
    }
}

/// Attempts of one write: the first error that is not transient ends them at once (a full
/// storage, a refusal), so it is what the backup reports, not a later attempt's timeout.
const WRITE_ATTEMPTS: u32 = 3;

/// One attempt per SDK call (we retry, in [`with_retries`]), with the size-scaled time limit.
fn single_attempt(cfg: &S3Config, bytes: u64) -> aws_sdk_s3::config::Builder {
    aws_sdk_s3::config::Builder::new()
        .timeout_config(crate::s3::upload_timeouts(cfg.timeout, bytes))
        .retry_config(aws_sdk_s3::config::retry::RetryConfig::standard().with_max_attempts(1))
}

/// Runs a write up to [`WRITE_ATTEMPTS`] times with backoff while its error is transient.
async fn with_retries<T, F, Fut>(mut attempt: F) -> Result<T, S3Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, S3Error>>,
{
    let mut delay = std::time::Duration::from_millis(500);
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
mod tests {
    use super::*;

    #[test]
    fn parts_cover_multi_terabyte_dumps() {
        assert_eq!(part_size(1), 8 * MIB);
        assert_eq!(part_size(1000), 8 * MIB);
        assert_eq!(part_size(1001), 16 * MIB);
        assert_eq!(part_size(10_000), (8 * MIB) << 9);
        let tib = 1u64 << 40;
        assert!(capacity(MAX_PARTS) > 7 * tib, "{}", capacity(MAX_PARTS));
        // Dumps up to ~8 GB compressed never leave 8 MiB parts.
        assert_eq!(capacity(1000), 1000 * 8 * MIB as u64);
    }

    #[test]
    fn buffers_stay_within_budget_while_parts_are_small() {
        for n in [1, 1000, 1001] {
            let size = part_size(n);
            let buffers = (parts_in_flight(size) + 1) * size;
            assert!(buffers <= BUFFER_BUDGET + size, "part {n}: {buffers}");
        }
        assert_eq!(parts_in_flight(8 * MIB), 1);
        assert_eq!(parts_in_flight(512 * MIB), 1);
    }

    #[tokio::test]
    async fn counting_and_compression_round_trip() {
        use async_compression::tokio::bufread::ZstdDecoder;
        let data: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let (counting, count) = Counting::new(std::io::Cursor::new(data.clone()));
        let mut compressed = Vec::new();
        compress(counting, Compression::Zstd(3))
            .read_to_end(&mut compressed)
            .await
            .unwrap();
        assert_eq!(count.load(Ordering::Relaxed), data.len() as u64);
        assert!(compressed.len() < data.len());
        let mut back = Vec::new();
        ZstdDecoder::new(&compressed[..])
            .read_to_end(&mut back)
            .await
            .unwrap();
        assert_eq!(back, data);
    }

    #[tokio::test]
    async fn fill_reads_exactly_up_to_the_size() {
        let mut r = std::io::Cursor::new(vec![7u8; 10]);
        assert_eq!(fill(&mut r, 4).await.unwrap().len(), 4);
        assert_eq!(fill(&mut r, 100).await.unwrap().len(), 6);
        assert!(fill(&mut r, 100).await.unwrap().is_empty());
    }
}
