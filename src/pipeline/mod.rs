//! The streaming pipeline between a dump and the store: bytes → compression → SHA-256 and byte
//! count → [`Store::upload`]. No temporary files; memory is bounded by the store's buffers.

pub mod crypt;
pub mod fetch;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_compression::Level;
use async_compression::tokio::bufread::{GzipEncoder, ZstdEncoder};
use async_compression::zstd::CParameter;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, BufReader};
use tokio_util::io::InspectReader;

use crate::model::Compression;
use crate::store::{Store, UploadError};

pub use crate::store::BoxRead;

/// zstd job size per worker thread: small jobs keep the compressor's own buffers at a few MiB
/// per worker (its default for level 3 is 8 MiB of input plus output per job).
const ZSTD_JOB: u32 = 1024 * 1024;

/// Wraps a reader, counting the bytes that pass.
pub fn counting<R: AsyncRead + Unpin + Send>(
    inner: R,
) -> (impl AsyncRead + Unpin + Send + use<R>, Arc<AtomicU64>) {
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    let reader = InspectReader::new(inner, move |b: &[u8]| {
        c.fetch_add(b.len() as u64, Ordering::Relaxed);
    });
    (reader, count)
}

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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    pub size: u64,
    pub sha256: String,
}

/// Streams `reader` into `key`, hashing what is stored on the way.
pub async fn store_stream(
    store: &dyn Store,
    key: &str,
    reader: impl AsyncRead + Unpin + Send,
) -> Result<Uploaded, UploadError> {
    let mut sha = Sha256::new();
    let hashing = InspectReader::new(reader, |b: &[u8]| sha.update(b));
    let size = store.upload(key, Box::new(hashing)).await?;
    Ok(Uploaded {
        size,
        sha256: hex::encode(sha.finalize()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn counting_and_compression_round_trip() {
        use async_compression::tokio::bufread::ZstdDecoder;
        let data: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let (counted, count) = counting(std::io::Cursor::new(data.clone()));
        let mut compressed = Vec::new();
        compress(counted, Compression::Zstd(3))
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
    async fn stored_streams_are_hashed_as_stored() {
        let store = crate::store::memory::MemoryStore::new();
        let data = vec![42u8; 100_000];
        let up = store_stream(&store, "k", std::io::Cursor::new(data.clone()))
            .await
            .unwrap();
        assert_eq!(up.size, 100_000);
        assert_eq!(up.sha256, hex::encode(Sha256::digest(&data)));
        assert_eq!(store.object("k").unwrap().len(), 100_000);
    }
}
