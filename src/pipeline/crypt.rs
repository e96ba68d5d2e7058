//! age encryption in the stream (README "Encryption"): compressed bytes → one age file per
//! object on the way up, and back on the way down. The age format's STREAM construction seals
//! 64 KiB chunks, so memory stays bounded whatever the object's size; every chunk is
//! authenticated, the last one marked as last, so a truncated or altered object never
//! decrypts.
//!
//! Encryption needs only public keys ([`Recipients`]); reading needs an identity
//! ([`Identities`]), given at restore time and never written anywhere.

use std::io::Write;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use age::secrecy::ExposeSecret;
use tokio::io::{AsyncRead, BufReader, ReadBuf};
use tokio_util::compat::{FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

pub use crate::model::encryption::Identities;
use crate::model::encryption::Recipients;
use crate::store::BoxRead;

/// What the age writer has sealed and not yet handed on.
#[derive(Clone, Default)]
struct Sealed(Arc<Mutex<Vec<u8>>>);

impl Write for Sealed {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("sealed lock").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A reader of `inner`'s bytes as one age file.
struct Sealing<R> {
    inner: R,
    writer: Option<age::stream::StreamWriter<Sealed>>,
    sealed: Sealed,
    out: Vec<u8>,
    pos: usize,
    buf: Vec<u8>,
}

/// Encrypts `input` to `recipients` as it is read: one age file.
pub fn encrypt<'a>(
    input: impl AsyncRead + Unpin + Send + 'a,
    recipients: &Recipients,
) -> std::io::Result<BoxRead<'a>> {
    let keys: Vec<Box<dyn age::Recipient + Send + Sync>> =
        recipients.iter().map(|r| r.to_age()).collect();
    let encryptor =
        age::Encryptor::with_recipients(keys.iter().map(|k| k.as_ref() as &dyn age::Recipient))
            .map_err(|e| std::io::Error::other(format!("age: {e}")))?;
    let sealed = Sealed::default();
    // Writes the header and nonce into `sealed` at once.
    let writer = encryptor.wrap_output(sealed.clone())?;
    Ok(Box::new(Sealing {
        inner: input,
        writer: Some(writer),
        sealed,
        out: Vec::new(),
        pos: 0,
        buf: vec![0; 64 * 1024],
    }))
}

impl<R: AsyncRead + Unpin> AsyncRead for Sealing<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.pos < this.out.len() {
                let n = (this.out.len() - this.pos).min(buf.remaining());
                buf.put_slice(&this.out[this.pos..this.pos + n]);
                this.pos += n;
                return Poll::Ready(Ok(()));
            }
            let Some(writer) = this.writer.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            let mut rb = ReadBuf::new(&mut this.buf);
            std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            if rb.filled().is_empty() {
                // The end: the last chunk, marked as last.
                this.writer.take().expect("present").finish()?;
            } else {
                writer.write_all(rb.filled())?;
            }
            this.out.clear();
            this.pos = 0;
            std::mem::swap(
                &mut *this.sealed.0.lock().expect("sealed lock"),
                &mut this.out,
            );
        }
    }
}

/// Reads an identity file; `-` reads standard input (`docker compose exec -T … < key.txt`, so
/// the key never rests in the sidecar).
pub fn load_identities(path: &str) -> Result<Identities, String> {
    let text = if path == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| format!("cannot read an identity from standard input: {e}"))?;
        s
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| format!("identity file {path:?} cannot be read: {e}"))?
    };
    Identities::parse(&text, if path == "-" { "standard input" } else { path })
}

/// Why an encrypted object cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// None of the identities is one of the recipients.
    #[error("none of the identities in {from} can decrypt it{}", mine(.public))]
    NoMatchingKey { from: String, public: Vec<String> },
    /// The header is not a readable age header: damage, or not an age file.
    #[error("it is not a readable age file ({0})")]
    Damaged(String),
}

fn mine(public: &[String]) -> String {
    if public.is_empty() {
        String::new()
    } else {
        format!(" (they are for {})", public.join(", "))
    }
}

/// Decrypts a stream of stored bytes: reads the header and unwraps the file key now, then
/// decrypts chunk by chunk as it is read (an altered or truncated object fails the read).
pub async fn decrypt<'a>(
    input: impl AsyncRead + Unpin + Send + 'a,
    identities: &Identities,
) -> Result<BoxRead<'a>, OpenError> {
    let buffered = BufReader::with_capacity(64 * 1024, input).compat();
    let decryptor = age::Decryptor::new_async_buffered(buffered)
        .await
        .map_err(|e| OpenError::Damaged(describe(&e)))?;
    match decryptor.decrypt_async(identities.iter()) {
        Ok(reader) => Ok(Box::new(reader.compat())),
        Err(age::DecryptError::NoMatchingKeys) => Err(OpenError::NoMatchingKey {
            from: identities.source.clone(),
            public: identities.public().to_vec(),
        }),
        Err(e) => Err(OpenError::Damaged(describe(&e))),
    }
}

fn describe(e: &age::DecryptError) -> String {
    match e {
        age::DecryptError::Io(io) => io.to_string(),
        other => other.to_string(),
    }
}

/// A new X25519 identity and its public key (tests and `make` recipes use `age-keygen`).
pub fn generate() -> (String, String) {
    let id = age::x25519::Identity::generate();
    (
        id.to_string().expose_secret().to_string(),
        id.to_public().to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    async fn sealed(data: &[u8], to: &Recipients) -> Vec<u8> {
        let mut out = Vec::new();
        encrypt(data, to)
            .unwrap()
            .read_to_end(&mut out)
            .await
            .unwrap();
        out
    }

    async fn opened(stored: &[u8], ids: &Identities) -> std::io::Result<Vec<u8>> {
        let mut r = decrypt(stored, ids)
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let mut out = Vec::new();
        r.read_to_end(&mut out).await?;
        Ok(out)
    }

    #[tokio::test]
    async fn round_trip_across_chunks_to_several_recipients() {
        let (a_secret, a_public) = generate();
        let (b_secret, b_public) = generate();
        let to = Recipients::parse(&format!("{a_public},{b_public}")).unwrap();
        // Several 64 KiB chunks, not a multiple of the chunk size, and the empty object.
        let data: Vec<u8> = (0..300_001u32).map(|i| (i % 251) as u8).collect();
        for data in [data, vec![]] {
            let stored = sealed(&data, &to).await;
            assert!(stored.starts_with(b"age-encryption.org/v1\n"));
            assert!(stored.len() > data.len());
            for secret in [&a_secret, &b_secret] {
                let ids = Identities::parse(secret, "key.txt").unwrap();
                assert_eq!(opened(&stored, &ids).await.unwrap(), data);
            }
        }
    }

    #[tokio::test]
    async fn the_wrong_key_is_refused_at_the_header_and_damage_fails_the_read() {
        let (_, a_public) = generate();
        let (c_secret, c_public) = generate();
        let to = Recipients::parse(&a_public).unwrap();
        let data = vec![7u8; 200_000];
        let stored = sealed(&data, &to).await;
        let wrong = Identities::parse(&c_secret, "other.txt").unwrap();
        let e = decrypt(&stored[..], &wrong).await.err().unwrap();
        let text = e.to_string();
        assert!(matches!(e, OpenError::NoMatchingKey { .. }));
        assert!(
            text.contains("other.txt") && text.contains(&c_public),
            "{text}"
        );
        assert!(!text.contains("AGE-SECRET-KEY"), "{text}");

        // A flipped byte in the payload, or a cut-off end: the read fails, never short data.
        let (k_secret, k_public) = generate();
        let to = Recipients::parse(&k_public).unwrap();
        let stored = sealed(&data, &to).await;
        let ids = Identities::parse(&k_secret, "key.txt").unwrap();
        let mut flipped = stored.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 1;
        assert!(opened(&flipped, &ids).await.is_err());
        assert!(opened(&stored[..stored.len() - 100], &ids).await.is_err());
        let e = decrypt(&b"not age"[..], &ids).await.err().unwrap();
        assert!(matches!(e, OpenError::Damaged(_)), "{e}");
    }

    #[test]
    fn identity_files_parse_and_never_echo_a_line() {
        let (a, a_public) = generate();
        let (b, _) = generate();
        let ids = Identities::parse(
            &format!("# created: today\n# public key: x\n{a}\n\n{b}\n"),
            "k",
        )
        .unwrap();
        assert_eq!(ids.count(), 2);
        assert_eq!(ids.public()[0], a_public);
        assert!(!format!("{ids:?}").contains("AGE-SECRET"));
        let broken = format!("{a}\n{}X\n", &b[..b.len() - 1]);
        let e = Identities::parse(&broken, "key.txt").unwrap_err();
        assert_eq!(
            e,
            "key.txt: line 2 is not an age identity (AGE-SECRET-KEY-1…, as age-keygen writes)"
        );
        let e = Identities::parse(&a_public, "key.txt").unwrap_err();
        assert!(e.contains("a public key"), "{e}");
        assert!(
            Identities::parse("# nothing\n", "k")
                .unwrap_err()
                .contains("holds no identity")
        );
        assert!(
            Identities::parse("age-encryption.org/v1\n-> scrypt x\n", "k")
                .unwrap_err()
                .contains("passphrase-protected")
        );
        let merged = Identities::merge(vec![
            Identities::parse(&a, "one").unwrap(),
            Identities::parse(&b, "two").unwrap(),
        ])
        .unwrap();
        assert_eq!(merged.count(), 2);
        assert_eq!(merged.source, "one, two");
    }
}
