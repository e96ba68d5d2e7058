//! Reading stored objects back: store → byte count + SHA-256 → decompression, streamed. The
//! checks are settled only at the end of the stream ([`Checked::verdict`]), so a consumer that
//! must not act on bad data holds its last step until then (see `restore`).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use async_compression::tokio::bufread::{GzipDecoder, ZstdDecoder};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, BufReader, ReadBuf};

use super::crypt::{self, Identities, OpenError};
use crate::model::Compression;
use crate::model::encryption;
use crate::model::manifest::{Manifest, Object};
use crate::store::{BoxRead, Store};

/// What the bytes that passed add up to.
#[derive(Debug, Default, Clone)]
struct Tally {
    bytes: u64,
    sha: Sha256,
}

/// Counts and hashes the stored (compressed) bytes as they pass.
pub struct Checked<R> {
    inner: R,
    tally: Arc<Mutex<Tally>>,
}

/// Reads what a [`Checked`] reader saw, from outside the pipeline.
#[derive(Clone)]
pub struct Tallies(Arc<Mutex<Tally>>);

impl Tallies {
    pub fn bytes(&self) -> u64 {
        self.0.lock().expect("tally lock").bytes
    }

    /// `Ok` when the bytes seen so far are exactly the object the manifest describes.
    pub fn verdict(&self, expected: &Object) -> Result<(), Damage> {
        let t = self.0.lock().expect("tally lock").clone();
        let sha = hex::encode(t.sha.finalize());
        if t.bytes != expected.size {
            return Err(Damage::Size {
                name: expected.name.clone(),
                expected: expected.size,
                actual: t.bytes,
            });
        }
        if sha != expected.sha256 {
            return Err(Damage::Checksum {
                name: expected.name.clone(),
                expected: expected.sha256.clone(),
                actual: sha,
            });
        }
        Ok(())
    }
}

impl<R> Checked<R> {
    pub fn new(inner: R) -> (Checked<R>, Tallies) {
        let tally = Arc::new(Mutex::new(Tally::default()));
        (
            Checked {
                inner,
                tally: tally.clone(),
            },
            Tallies(tally),
        )
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Checked<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &r {
            let new = &buf.filled()[before..];
            let mut t = self.tally.lock().expect("tally lock");
            t.bytes += new.len() as u64;
            t.sha.update(new);
        }
        r
    }
}

/// Why a stored object is not the one the manifest describes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Damage {
    #[error("{name}: {actual} bytes stored, the manifest says {expected} (truncated or replaced)")]
    Size {
        name: String,
        expected: u64,
        actual: u64,
    },
    #[error("{name}: SHA-256 {actual} does not match the manifest's {expected} (corrupted)")]
    Checksum {
        name: String,
        expected: String,
        actual: String,
    },
    #[error("{name}: {reason}")]
    Unreadable { name: String, reason: String },
}

/// The compression of an object, from the manifest (`zstd:3`, `gzip:6`, `none`).
pub fn compression_of(m: &Manifest) -> Result<Compression, String> {
    Compression::parse(&m.compression).ok_or_else(|| {
        format!(
            "backup {} has an unknown compression {:?}: upgrade pgbackup",
            m.backup_id, m.compression
        )
    })
}

/// Why the content of an object cannot be read, found before any of it is.
#[derive(Debug, thiserror::Error)]
pub enum Unreadable {
    #[error("{0}")]
    Damage(#[from] Damage),
    /// Encrypted, and no identity given can decrypt it: bad input, nothing was read.
    #[error("{0}")]
    Locked(String),
    /// A compression or encryption this pgctl does not know.
    #[error("{0}")]
    Unsupported(String),
}

/// Whether the objects of `m` are age files; an encryption this pgctl does not know is an
/// error.
pub fn encrypted(m: &Manifest) -> Result<bool, String> {
    match &m.encryption {
        None => Ok(false),
        Some(e) if e.method == encryption::AGE => Ok(true),
        Some(e) => Err(format!(
            "backup {} is encrypted with {:?}, which this pgctl does not read: upgrade pgbackup",
            m.backup_id, e.method
        )),
    }
}

/// What to do when an encrypted backup must be read: who can decrypt it.
fn recipients_of(m: &Manifest) -> String {
    m.encryption
        .as_ref()
        .map(|e| e.recipients.join(", "))
        .unwrap_or_default()
}

/// An encrypted object whose age header cannot be read: damage.
fn not_age(o: &Object, reason: &str) -> Unreadable {
    Unreadable::Damage(Damage::Unreadable {
        name: o.name.clone(),
        reason: format!("not a readable age file ({reason})"),
    })
}

/// The content of one object as pg_dump wrote it: stored bytes → size + SHA-256 (the
/// returned [`Tallies`]) → age decryption when the backup is encrypted → decompression. The
/// age header is read and the file key unwrapped here, so a missing or wrong identity fails
/// before any content is read.
pub async fn content(
    store: &dyn Store,
    m: &Manifest,
    o: &Object,
    keys: Option<&Identities>,
) -> Result<(BoxRead<'static>, Tallies), Unreadable> {
    let compression = compression_of(m).map_err(Unreadable::Unsupported)?;
    let sealed = encrypted(m).map_err(Unreadable::Unsupported)?;
    let keys = match (sealed, keys) {
        (false, _) => None,
        (true, Some(k)) => Some(k),
        (true, None) => {
            return Err(Unreadable::Locked(format!(
                "backup {} is encrypted with age (to {}): give an identity that can decrypt it with --identity FILE or PGBACKUP_AGE_IDENTITY_FILE",
                m.backup_id,
                recipients_of(m)
            )));
        }
    };
    let body = open(store, m, o).await?;
    let (checked, tallies) = Checked::new(body);
    let plain: BoxRead<'static> = match keys {
        None => Box::new(checked),
        Some(keys) => crypt::decrypt(checked, keys).await.map_err(|e| match e {
            OpenError::NoMatchingKey { .. } => Unreadable::Locked(format!(
                "backup {} is encrypted to {}, and {e}: give the identity of one of those recipients",
                m.backup_id,
                recipients_of(m)
            )),
            OpenError::Damaged(reason) => not_age(o, &reason),
        })?,
    };
    Ok((decompress(plain, compression), tallies))
}

/// Opens one object of a backup as a stream of its stored bytes.
pub async fn open(store: &dyn Store, m: &Manifest, o: &Object) -> Result<BoxRead<'static>, Damage> {
    get(store, m, &o.name).await
}

/// The stored bytes of `name` in the backup's folder.
async fn get(store: &dyn Store, m: &Manifest, name: &str) -> Result<BoxRead<'static>, Damage> {
    let (_, body) = store
        .get(&format!("{}/{name}", m.prefix))
        .await
        .map_err(|e| Damage::Unreadable {
            name: name.to_string(),
            reason: e.to_string(),
        })?;
    Ok(body)
}

/// Decompresses a stream of stored bytes. zstd frames carry their own checksum, which the
/// decoder checks; gzip has its CRC.
pub fn decompress<'a>(input: impl AsyncRead + Unpin + Send + 'a, c: Compression) -> BoxRead<'a> {
    let buffered = BufReader::with_capacity(256 * 1024, input);
    match c {
        Compression::Zstd(_) => {
            let mut d = ZstdDecoder::new(buffered);
            // Several frames may follow each other (zstdmt writes one).
            d.multiple_members(true);
            Box::new(d)
        }
        Compression::Gzip(_) => {
            let mut d = GzipDecoder::new(buffered);
            d.multiple_members(true);
            Box::new(d)
        }
        Compression::None => Box::new(buffered),
    }
}

/// Checks `SHA256SUMS` against the manifest: the same objects, with the same SHA-256 each (what
/// `sha256sum -c` will check for someone restoring with standard tools).
pub async fn verify_sums(store: &dyn Store, m: &Manifest) -> Result<(), String> {
    let key = format!("{}/{}", m.prefix, crate::model::layout::SUMS);
    let body = crate::store::read_small(store, &key, SUMS_MAX, crate::model::layout::SUMS).await?;
    sums_problem(&String::from_utf8_lossy(&body), m).map_or(Ok(()), Err)
}

/// The largest `SHA256SUMS` read: one line of about 100 bytes per object.
const SUMS_MAX: u64 = 16 << 20;

/// How `SHA256SUMS` text disagrees with the manifest, if it does. Pure.
pub fn sums_problem(text: &str, m: &Manifest) -> Option<String> {
    let mut listed = std::collections::BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Some((sha, name)) = line.split_once("  ") else {
            return Some(format!(
                "{}: {line:?} is not a `sha256sum` line",
                crate::model::layout::SUMS
            ));
        };
        listed.insert(name.to_string(), sha.to_string());
    }
    for o in &m.objects {
        match listed.remove(&o.name) {
            None => {
                return Some(format!(
                    "{} does not list {}",
                    crate::model::layout::SUMS,
                    o.name
                ));
            }
            Some(sha) if sha != o.sha256 => {
                return Some(format!(
                    "{} gives {} the SHA-256 {sha}, the manifest {}",
                    crate::model::layout::SUMS,
                    o.name,
                    o.sha256
                ));
            }
            Some(_) => {}
        }
    }
    listed.keys().next().map(|extra| {
        format!(
            "{} lists {extra}, which the manifest does not hold",
            crate::model::layout::SUMS
        )
    })
}

/// What [`verify_object`] read of an object whose stored bytes matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    /// The stored bytes (an unencrypted object, or no identity given).
    Stored,
    /// The stored bytes, and the age file decrypted whole: every chunk authenticated.
    Decrypted,
}

/// Reads one object to the end and checks its size and SHA-256 against the manifest; an
/// encrypted object is decrypted on the way when `keys` are given.
pub async fn verify_object(
    store: &dyn Store,
    m: &Manifest,
    o: &Object,
    keys: Option<&Identities>,
) -> Result<Verified, Unreadable> {
    let sealed = encrypted(m).map_err(Unreadable::Unsupported)?;
    let body = open(store, m, o).await?;
    let (checked, tallies) = Checked::new(body);
    let (mut reader, verified): (BoxRead<'static>, _) = match keys.filter(|_| sealed) {
        None => (Box::new(checked), Verified::Stored),
        Some(keys) => match crypt::decrypt(checked, keys).await {
            Ok(r) => (r, Verified::Decrypted),
            Err(OpenError::NoMatchingKey { .. }) => {
                // The stored bytes are still checked; the content cannot be.
                recheck(store, m, o).await?;
                return Err(Unreadable::Locked(format!(
                    "{}: the stored bytes match, but none of the identities in {} can decrypt it (encrypted to {})",
                    o.name,
                    keys.source,
                    recipients_of(m)
                )));
            }
            Err(OpenError::Damaged(reason)) => return Err(not_age(o, &reason)),
        },
    };
    match tokio::io::copy(&mut reader, &mut tokio::io::sink()).await {
        Ok(_) => {
            tallies.verdict(o)?;
            Ok(verified)
        }
        Err(e) => {
            // A read cut short says nothing about the object: its stored bytes are read again
            // whole, so damage is named as such.
            let read = tallies.bytes();
            drop(reader);
            recheck(store, m, o).await?;
            Err(Unreadable::Damage(Damage::Unreadable {
                name: o.name.clone(),
                reason: format!(
                    "reading failed after {read} bytes: {e} (the stored bytes, read again, match the manifest)"
                ),
            }))
        }
    }
}

/// What to add to the error of a read of `o` that broke off: its stored bytes read again whole
/// tell damage (named by SHA-256) from a broken read (the object itself intact).
pub async fn cut_short(store: &dyn Store, m: &Manifest, o: &Object) -> String {
    match recheck(store, m, o).await {
        Err(d) => format!("; {d}"),
        Ok(()) => format!("; {} itself is intact (read again)", o.name),
    }
}

/// Reads `o`'s stored bytes once more, whole, and checks their size and SHA-256.
pub async fn recheck(store: &dyn Store, m: &Manifest, o: &Object) -> Result<(), Damage> {
    let body = open(store, m, o).await?;
    let (mut checked, tallies) = Checked::new(body);
    let copied = tokio::io::copy(&mut checked, &mut tokio::io::sink()).await;
    match (tallies.verdict(o), copied) {
        (Err(d), _) => Err(d),
        (Ok(()), Err(e)) => Err(Damage::Unreadable {
            name: o.name.clone(),
            reason: e.to_string(),
        }),
        (Ok(()), Ok(_)) => Ok(()),
    }
}

/// An encrypted sample backup in the memory store (tests): its manifest, the identity and its
/// public key.
#[cfg(test)]
pub(crate) async fn sealed_sample(
    store: &crate::store::memory::MemoryStore,
    raw: &[u8],
) -> (Manifest, String, String) {
    use crate::store::Store;
    use tokio::io::AsyncReadExt;
    let (secret, public) = crypt::generate();
    let to = crate::model::encryption::Recipients::parse(&public).unwrap();
    let mut compressed = Vec::new();
    crate::pipeline::compress(raw, Compression::Zstd(3))
        .read_to_end(&mut compressed)
        .await
        .unwrap();
    let mut stored = Vec::new();
    crypt::encrypt(&compressed[..], &to)
        .unwrap()
        .read_to_end(&mut stored)
        .await
        .unwrap();
    let mut m = Manifest::sample(
        "shop/db",
        "shop/db",
        "20261121T030000Z-logical".parse().unwrap(),
    );
    m.encryption = Some(to.record());
    m.objects[0].name = "app.dump.zst.age".into();
    m.objects[0].size = stored.len() as u64;
    m.objects[0].sha256 = hex::encode(Sha256::digest(&stored));
    let key = format!("{}/{}", m.prefix, m.objects[0].name);
    store.put(&key, bytes::Bytes::from(stored)).await.unwrap();
    (m, secret, public)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::manifest::ObjectKind;
    use tokio::io::AsyncReadExt;

    fn object(data: &[u8]) -> Object {
        Object {
            name: "app.dump.zst".into(),
            kind: ObjectKind::Database,
            database: Some("app".into()),
            size: data.len() as u64,
            raw_size: 0,
            sha256: hex::encode(Sha256::digest(data)),
        }
    }

    async fn check(stored: &[u8], expected: &Object) -> Result<(), Damage> {
        let (mut r, t) = Checked::new(stored);
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, stored, "bytes pass through unchanged");
        t.verdict(expected)
    }

    #[test]
    fn sums_must_list_every_object_with_its_sha() {
        let a = object(b"a");
        let g = Object {
            name: "globals.sql.zst".into(),
            kind: ObjectKind::Globals,
            database: None,
            ..object(b"g")
        };
        let m: Manifest = serde_json::from_value(serde_json::json!({
            "format_version": 1, "backup_id": "20261120T030000Z-logical", "kind": "logical",
            "target": "p/db", "prefix": "p/db/20261120T030000Z-logical", "container": "c",
            "method": "exec", "format": "custom", "compression": "zstd:3",
            "postgres": {"server_version": "17", "major": 17, "dump_tool": "pg_dump 17"},
            "databases": ["app"], "objects": [a, g],
            "started_at": "2026-11-20T03:00:00Z", "finished_at": "2026-11-20T03:00:01Z",
            "tool": {"name": "pgbackup", "version": "0"}
        }))
        .unwrap();
        let line = |o: &Object| format!("{}  {}\n", o.sha256, o.name);
        let good = format!("{}{}", line(&m.objects[1]), line(&m.objects[0]));
        assert_eq!(sums_problem(&good, &m), None);
        let missing = line(&m.objects[0]);
        assert!(
            sums_problem(&missing, &m)
                .unwrap()
                .contains("does not list globals.sql.zst")
        );
        let wrong = good.replace(&m.objects[0].sha256, &"0".repeat(64));
        assert!(
            sums_problem(&wrong, &m)
                .unwrap()
                .contains("app.dump.zst the SHA-256")
        );
        let extra = format!("{good}{}  other.dump.zst\n", "1".repeat(64));
        assert!(
            sums_problem(&extra, &m)
                .unwrap()
                .contains("lists other.dump.zst")
        );
        assert!(
            sums_problem("garbage\n", &m)
                .unwrap()
                .contains("not a `sha256sum` line")
        );
    }

    #[tokio::test]
    async fn verdicts() {
        let data = b"some stored bytes".to_vec();
        let o = object(&data);
        assert_eq!(check(&data, &o).await, Ok(()));
        assert!(matches!(
            check(&data[..5], &o).await,
            Err(Damage::Size {
                expected: 17,
                actual: 5,
                ..
            })
        ));
        let mut flipped = data.clone();
        flipped[3] ^= 1;
        let e = check(&flipped, &o).await.unwrap_err();
        assert!(matches!(e, Damage::Checksum { .. }));
        assert!(e.to_string().contains("corrupted"), "{e}");
    }

    #[tokio::test]
    async fn round_trip_through_compression() {
        let raw: Vec<u8> = (0..300_000u32).flat_map(|i| i.to_le_bytes()).collect();
        for c in [
            Compression::Zstd(3),
            Compression::Gzip(6),
            Compression::None,
        ] {
            let mut stored = Vec::new();
            crate::pipeline::compress(&raw[..], c)
                .read_to_end(&mut stored)
                .await
                .unwrap();
            let mut back = Vec::new();
            decompress(&stored[..], c)
                .read_to_end(&mut back)
                .await
                .unwrap();
            assert_eq!(back, raw, "{c}");
            if c != Compression::None {
                // A flipped byte in the middle is caught by the format's own check.
                let mut bad = stored.clone();
                let mid = bad.len() / 2;
                bad[mid] ^= 0x40;
                let mut sink = Vec::new();
                let r = decompress(&bad[..], c).read_to_end(&mut sink).await;
                assert!(r.is_err() || sink != raw, "{c}: corruption went unnoticed");
            }
        }
    }

    #[tokio::test]
    async fn encrypted_content_opens_only_with_its_identity() {
        use crate::store::Store;
        let store = crate::store::memory::MemoryStore::new();
        let raw: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let (m, secret, public) = sealed_sample(&store, &raw).await;
        let o = m.objects[0].clone();
        let keys = Identities::parse(&secret, "key.txt").unwrap();
        let (mut r, t) = content(&store, &m, &o, Some(&keys)).await.unwrap();
        let mut back = Vec::new();
        r.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, raw);
        assert_eq!(t.verdict(&o), Ok(()));
        // No identity, a wrong one: refused before any content is read, naming the recipient.
        let e = content(&store, &m, &o, None).await.err().unwrap();
        assert!(
            matches!(&e, Unreadable::Locked(w) if w.contains(&public) && w.contains("--identity")),
            "{e}"
        );
        let (other, _) = crypt::generate();
        let wrong = Identities::parse(&other, "other.txt").unwrap();
        let e = content(&store, &m, &o, Some(&wrong)).await.err().unwrap();
        assert!(
            matches!(&e, Unreadable::Locked(w) if w.contains(&public) && w.contains("other.txt")),
            "{e}"
        );
        // Verify: stored bytes without a key, the whole content with it, a note with a wrong one.
        assert_eq!(
            verify_object(&store, &m, &o, None).await.unwrap(),
            Verified::Stored
        );
        assert_eq!(
            verify_object(&store, &m, &o, Some(&keys)).await.unwrap(),
            Verified::Decrypted
        );
        assert!(matches!(
            verify_object(&store, &m, &o, Some(&wrong)).await,
            Err(Unreadable::Locked(_))
        ));
        // A byte flipped inside: the SHA-256 names it, decrypted or not.
        let key = format!("{}/{}", m.prefix, o.name);
        let mut bad = store.object(&key).unwrap().to_vec();
        let mid = bad.len() / 2;
        bad[mid] ^= 1;
        store.put(&key, bytes::Bytes::from(bad)).await.unwrap();
        for k in [None, Some(&keys)] {
            let e = verify_object(&store, &m, &o, k)
                .await
                .unwrap_err()
                .to_string();
            assert!(e.contains("does not match the manifest"), "{e}");
        }
        // An encryption this pgctl does not know.
        let mut future = m.clone();
        future.encryption.as_mut().unwrap().method = "sops".into();
        let e = content(&store, &future, &o, Some(&keys))
            .await
            .err()
            .unwrap();
        assert!(
            matches!(&e, Unreadable::Unsupported(w) if w.contains("upgrade pgbackup")),
            "{e}"
        );
    }
}
