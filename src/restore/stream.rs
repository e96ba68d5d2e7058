//! Streaming a stored object into the target: checked (size and SHA-256 settled at the end),
//! decompressed, converted or rewritten, fed to `psql`. Shared by logical and physical restore.

use super::*;

/// Printed by psql after the last statement of a load ran: every statement before it succeeded.
pub(super) const LOADED: &str = "pgbackup:loaded";

/// One `psql` session inside the target, reading SQL from stdin (`ON_ERROR_STOP`).
pub(super) struct Psql {
    pub(super) input: ExecInput,
    pub(super) output: JoinHandle<Result<(ExecExit, String), PgError>>,
    pub(super) what: String,
}

impl Psql {
    /// Starts psql on `database` through `access` (in the target, or from the sidecar for a
    /// server reached by URL). `what` names it in errors.
    pub(super) async fn start(
        access: &Access,
        database: &str,
        what: &str,
    ) -> Result<Psql, RestoreError> {
        let (mut stream, input) = access.script(database).await?;
        // Drained concurrently: psql blocks when nobody reads what it prints.
        let output = tokio::spawn(async move {
            let mut tail = Vec::new();
            let mut chunk = vec![0u8; 8192];
            loop {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        tail.extend_from_slice(&chunk[..n]);
                        if tail.len() > 4096 {
                            tail.drain(..tail.len() - 4096);
                        }
                    }
                }
            }
            let exit = stream.finish().await?;
            Ok((exit, String::from_utf8_lossy(&tail).into_owned()))
        });
        Ok(Psql {
            input,
            output,
            what: what.to_string(),
        })
    }

    /// Sends `last`, then a marker; ends the input and checks that psql ran everything.
    pub(super) async fn finish(mut self, last: &str) -> Result<(), RestoreError> {
        let sent = async {
            self.input.write_all(last.as_bytes()).await?;
            self.input
                .write_all(format!("\n\\echo {LOADED}\n").as_bytes())
                .await?;
            self.input.flush().await?;
            self.input.shutdown().await
        }
        .await;
        drop(self.input);
        let (exit, out) = self
            .output
            .await
            .map_err(|e| RestoreError::Failed(e.to_string()))??;
        if exit.code == 0 && out.contains(LOADED) {
            return Ok(());
        }
        Err(RestoreError::Failed(format!(
            "{} failed (psql exit code {}): {}{}",
            self.what,
            exit.code,
            if exit.stderr.is_empty() {
                "no error output"
            } else {
                &exit.stderr
            },
            sent.err()
                .map(|e| format!(" (sending the input failed: {e})"))
                .unwrap_or_default()
        )))
    }

    /// Ends a load: on success the rest of the SQL is sent and psql checked ([`Psql::finish`]);
    /// on failure the input ends early and the error gains what psql said, if anything.
    pub(super) async fn settle(
        self,
        fed: Result<String, RestoreError>,
    ) -> Result<(), RestoreError> {
        match fed {
            Ok(rest) => self.finish(&rest).await,
            Err(e) => {
                let said = self.abort().await;
                Err(match e {
                    RestoreError::Failed(m) if !said.is_empty() => {
                        RestoreError::Failed(format!("{m}; psql said: {said}"))
                    }
                    other => other,
                })
            }
        }
    }

    /// Ends the input early; returns psql's error output, if it failed by itself.
    pub(super) async fn abort(mut self) -> String {
        let _ = self.input.shutdown().await;
        drop(self.input);
        match tokio::time::timeout(Duration::from_secs(60), self.output).await {
            Ok(Ok(Ok((exit, _)))) => exit.stderr,
            Ok(Ok(Err(e))) => e.to_string(),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "psql did not end within 60 s of its input ending".into(),
        }
    }
}

/// What a load of database `d` into `t` rewrites (see [`sql::Rewrite`]).
pub(super) fn rewrite(plan: &Plan, d: &DbPlan, t: &Temporary, database_only: bool) -> sql::Rewrite {
    sql::Rewrite {
        from: d.database.clone(),
        to: t.load.clone(),
        server_major: plan.server_major,
        after_connect: plan.public_schema_before_15().unwrap_or_default(),
        database_only,
    }
}

/// Writes SQL through the [`sql::Rewriter`] into psql.
pub(super) struct Rewriting<'a> {
    pub(super) rewriter: sql::Rewriter,
    pub(super) input: &'a mut ExecInput,
    pub(super) buf: Vec<u8>,
}

impl Rewriting<'_> {
    pub(super) async fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.buf.clear();
        self.rewriter
            .feed(chunk, &mut self.buf)
            .map_err(std::io::Error::other)?;
        self.input.write_all(&self.buf).await
    }

    /// The rest of the rewritten SQL (see [`sql::Rewriter::finish`]).
    pub(super) fn finish(&mut self) -> Result<String, RestoreError> {
        let mut out = Vec::new();
        self.rewriter
            .finish(&mut out)
            .map_err(RestoreError::Failed)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

impl ChunkSink for Rewriting<'_> {
    async fn send(&mut self, chunk: Bytes) -> std::io::Result<()> {
        self.write(&chunk).await
    }
}

/// The stdin of a converter (`pg_restore -f -`): in the target, or in the sidecar.
pub(super) struct Raw(pub(super) std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>);

impl Raw {
    /// Ends the input: shut down and dropped. A child's pipe in the sidecar sees its end only
    /// when the writer is dropped (shutting a pipe down does nothing), docker exec's stdin on
    /// shutdown; a program reading to the end of its input would wait forever otherwise.
    pub(super) async fn close(&mut self) {
        let _ = self.0.shutdown().await;
        self.0 = Box::pin(tokio::io::sink());
    }
}

impl ChunkSink for Raw {
    async fn send(&mut self, chunk: Bytes) -> std::io::Result<()> {
        self.0.write_all(&chunk).await
    }
}

/// Streams database `d`'s whole object ([`stream_object`]) into a pg_restore's `input`, then
/// ends that input whatever happened, so the reader sees the end. `what` names the reader.
pub(super) async fn feed_whole(
    s: &Session<'_>,
    d: &DbPlan,
    what: &str,
    input: &mut Raw,
) -> Result<(), RestoreError> {
    let plan = s.plan;
    let r = stream_object(
        s.store,
        &plan.manifest,
        &d.object,
        plan.keys.as_deref(),
        what,
        input,
        s.progress,
    )
    .await;
    input.close().await;
    r
}

/// `pg_restore --create -f -`: turns a custom archive into the SQL psql loads.
pub(super) struct Converter {
    pub(super) input: Raw,
    pub(super) output: PgStream,
    pub(super) what: String,
}

pub(super) const CONVERT: [&str; 3] = ["--create", "--file=-", "--exit-on-error"];

impl Converter {
    /// Where `access` runs programs (the target, or the sidecar for a server reached by URL),
    /// with that pg_restore; `options` are the user's pg_restore options. `place` names it.
    pub(super) async fn in_target(
        access: &Access,
        place: &str,
        options: &[String],
    ) -> Result<Converter, RestoreError> {
        let mut args: Vec<String> = CONVERT.map(String::from).to_vec();
        args.extend(options.iter().cloned());
        let (output, input) = access.program_with_stdin("pg_restore", &args).await?;
        Ok(Converter {
            input: Raw(input),
            output,
            what: format!("pg_restore in {place}"),
        })
    }

    /// In the sidecar, whose pg_restore reads archives the target's is too old for.
    pub(super) fn in_sidecar(options: &[String]) -> Result<Converter, RestoreError> {
        let mut args: Vec<String> = CONVERT.map(String::from).to_vec();
        args.extend(options.iter().cloned());
        let (output, input) = pg::local_with_stdin("pg_restore", &args)?;
        Ok(Converter {
            input: Raw(Box::pin(input)),
            output,
            what: "pg_restore in the sidecar".into(),
        })
    }
}

/// pg_restore's SQL into `sink` until its output ends.
pub(super) async fn relay(
    output: &mut PgStream,
    sink: &mut Rewriting<'_>,
    what: &str,
) -> Result<(), RestoreError> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = output
            .read(&mut buf)
            .await
            .map_err(|e| RestoreError::Failed(format!("reading {what}'s output failed: {e}")))?;
        if n == 0 {
            return Ok(());
        }
        sink.write(&buf[..n])
            .await
            .map_err(|e| RestoreError::Failed(format!("psql stopped reading the restore: {e}")))?;
    }
}

/// Reports bytes read from S3 (a progress bar on a terminal).
pub trait Progress: Send + Sync {
    fn start(&self, what: &str, total: u64);
    fn set(&self, done: u64);
    fn finish(&self);
}

/// No progress output.
pub struct Quiet;

impl Progress for Quiet {
    fn start(&self, _: &str, _: u64) {}
    fn set(&self, _: u64) {}
    fn finish(&self) {}
}

/// Where a verified stream goes: a psql session, or tar in a helper container.
pub trait ChunkSink: Send {
    fn send(&mut self, chunk: Bytes) -> impl Future<Output = std::io::Result<()>> + Send;
}

/// The objects a logical restore reads: the roles, then each database.
pub fn objects_of(plan: &Plan) -> Vec<&Object> {
    let mut all: Vec<&Object> = plan.globals.iter().collect();
    for d in &plan.databases {
        all.push(&d.object);
    }
    all
}

/// Opens every object a restore will read far enough to know it can be decrypted: a missing or
/// wrong identity, or an object that is not an age file, is refused before anything changes.
/// Nothing is read for an unencrypted backup.
pub async fn check_keys(
    store: &dyn Store,
    m: &Manifest,
    objects: &[&Object],
    keys: Option<&Identities>,
) -> Result<(), RestoreError> {
    if !fetch::encrypted(m).map_err(RestoreError::Usage)? {
        return Ok(());
    }
    for o in objects {
        if let Err(e) = fetch::content(store, m, o, keys).await {
            return Err(match RestoreError::unreadable(e) {
                RestoreError::Usage(why) => {
                    RestoreError::Usage(format!("{why} (nothing was changed)"))
                }
                other => RestoreError::Failed(format!("{other}: nothing was changed")),
            });
        }
    }
    Ok(())
}

/// Streams one object of `m` (S3 → size + SHA-256 → decryption → decompression, see
/// [`fetch::content`]) into `sink`, then checks the manifest's size and checksum. `what` names
/// the destination in errors.
pub async fn stream_object(
    store: &dyn Store,
    m: &Manifest,
    object: &Object,
    keys: Option<&Identities>,
    what: &str,
    sink: &mut impl ChunkSink,
    progress: &dyn Progress,
) -> Result<(), RestoreError> {
    let (mut reader, tallies) = fetch::content(store, m, object, keys)
        .await
        .map_err(RestoreError::unreadable)?;
    progress.start(what, object.size);
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(n) => n,
            Err(e) => {
                // A truncated or corrupted stream usually shows here first; the tally of a
                // stream cut short says nothing about the stored object, so it is read again
                // whole to tell damage from a broken connection.
                progress.finish();
                let read = tallies.bytes();
                let damage = fetch::cut_short(store, m, object).await;
                return Err(RestoreError::Failed(format!(
                    "reading {} failed after {read} bytes: {e}{damage}",
                    object.name
                )));
            }
        };
        if n == 0 {
            break;
        }
        progress.set(tallies.bytes());
        if let Err(e) = sink.send(Bytes::copy_from_slice(&buf[..n])).await {
            // A damaged object can decompress into garbage that the destination rejects before
            // the stream's end shows the damage: the stored object is read again whole so the
            // error names the real cause.
            progress.finish();
            let damage = match fetch::recheck(store, m, object).await {
                Err(d) => format!("; {d}: restore rolled back"),
                Ok(()) => String::new(),
            };
            return Err(RestoreError::Failed(format!(
                "{what} stopped reading the restore: {e}{damage}"
            )));
        }
    }
    // The decoders read every frame up to the end of the object, so the tally is complete.
    progress.finish();
    tallies
        .verdict(object)
        .map_err(|e: Damage| RestoreError::Failed(format!("{e}: restore rolled back")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Refuses everything: a psql that hit an error in the data.
    struct Refusing;

    impl ChunkSink for Refusing {
        async fn send(&mut self, _: Bytes) -> std::io::Result<()> {
            Err(std::io::Error::other("invalid input syntax"))
        }
    }

    /// The error of streaming `data`, stored as the sample backup's object with `compression`
    /// and a SHA-256 it does not have, into a destination that refuses it.
    async fn streamed_into_refusing(compression: &str, data: Vec<u8>) -> String {
        let store = crate::store::memory::MemoryStore::new();
        let mut m = Manifest::sample(
            "shop/db",
            "shop/db",
            "20261121T030000Z-logical".parse().unwrap(),
        );
        m.compression = compression.into();
        m.objects[0].size = data.len() as u64;
        m.objects[0].sha256 = "00".repeat(32);
        let o = m.objects[0].clone();
        store
            .put(&format!("{}/{}", m.prefix, o.name), Bytes::from(data))
            .await
            .unwrap();
        stream_object(&store, &m, &o, None, "psql", &mut Refusing, &Quiet)
            .await
            .unwrap_err()
            .to_string()
    }

    /// A damaged object whose garbage the destination rejects first: the error still names the
    /// damage, found by reading the rest of the object.
    #[tokio::test]
    async fn a_destination_that_stops_early_does_not_hide_the_damage() {
        let e = streamed_into_refusing("none", vec![b'x'; 3 * CHUNK]).await;
        assert!(
            e.starts_with("psql stopped reading the restore: invalid input syntax; "),
            "{e}"
        );
        assert!(e.contains("app.dump.zst: SHA-256"), "{e}");
        assert!(e.contains("does not match the manifest"), "{e}");
    }

    /// A damaged object that stops decompressing half-way is named as damaged (its stored
    /// bytes read again), not as "truncated" from the count of a stream cut short.
    #[tokio::test]
    async fn a_stream_that_stops_decompressing_is_checked_whole() {
        let e = streamed_into_refusing("zstd:3", vec![7u8; 4 * CHUNK]).await;
        assert!(e.starts_with("reading app.dump.zst failed after "), "{e}");
        assert!(e.contains("does not match the manifest"), "{e}");
        assert!(!e.contains("truncated"), "{e}");
    }

    /// A missing or wrong identity is bad input found before anything changes.
    #[tokio::test]
    async fn keys_are_checked_before_anything_changes() {
        let store = crate::store::memory::MemoryStore::new();
        let (m, secret, public) = fetch::sealed_sample(&store, b"SELECT 1;\n").await;
        let o = &m.objects[0];
        let keys = Identities::parse(&secret, "key.txt").unwrap();
        check_keys(&store, &m, &[o], Some(&keys)).await.unwrap();
        let (other, _) = crate::pipeline::crypt::generate();
        let wrong = Identities::parse(&other, "other.txt").unwrap();
        for k in [None, Some(&wrong)] {
            let e = check_keys(&store, &m, &[o], k).await.unwrap_err();
            assert_eq!(e.exit_code(), crate::exit::USAGE);
            let text = e.to_string();
            assert!(text.contains(&public), "{text}");
            assert!(text.ends_with("(nothing was changed)"), "{text}");
        }
        // An unencrypted backup reads nothing here.
        let plain = Manifest::sample("shop/db", "shop/db", m.backup_id);
        check_keys(&store, &plain, &[&plain.objects[0]], None)
            .await
            .unwrap();
    }
}
