//! Reading a target: its connection (exec or connect), server facts and databases, and one
//! program's output streamed through the pipeline into one object.

use super::*;

/// How the backup reaches the target's server: the container (`c`), or the URL a declared
/// target names.
pub async fn access_for(
    ctx: &Ctx<'_>,
    target: &Target,
    c: Option<&Container>,
    spec: &TargetSpec,
) -> Result<Access, PgError> {
    let Some(c) = c else {
        let e = target.endpoint.as_ref().ok_or_else(|| {
            PgError::Other(format!(
                "target {} has no container and no URL",
                target.target
            ))
        })?;
        return Ok(Access::to(e));
    };
    Ok(match spec.method {
        Method::Exec => Access::Exec {
            docker: ctx.docker.clone(),
            container: c.id.clone(),
            user: spec.user.clone(),
        },
        // The container name resolves on every user-defined network the sidecar shares with it.
        Method::Connect => Access::Connect {
            host: c.name.clone(),
            port: 5432,
            user: spec.user.clone(),
            password: pg::container_password(ctx.docker, c).await?,
            env: vec![],
        },
    })
}

/// A server declared by URL that cannot be reached (a wrong CA, a host name the certificate
/// does not name, a password refused): the error names the URL it used, without its password,
/// so the setting to fix is in the message.
pub(super) fn reaching(target: &Target, e: BackupError) -> BackupError {
    match (&target.endpoint, e) {
        (Some(url), BackupError::Pg(e)) => BackupError::Pg(PgError::Other(format!(
            "{e} (connecting to {}, declared by {})",
            url.redacted(),
            crate::config::declared::variable(&target.target.service, "url")
        ))),
        (_, e) => e,
    }
}

/// What the job learned about the server before dumping.
pub(super) struct Server {
    pub(super) version: String,
    pub(super) major: u32,
    pub(super) dump_tool: String,
}

pub(super) async fn server_info(access: &Access, tool: &str) -> Result<Server, BackupError> {
    let rows = access
        .query(
            "postgres",
            "SELECT current_setting('server_version'), current_setting('server_version_num')",
        )
        .await?;
    let row = rows.first().cloned().unwrap_or_default();
    let (version, num) = row.split_once('|').unwrap_or((row.as_str(), ""));
    let major = pg::major_of(num).ok_or_else(|| {
        BackupError::Refused(format!("cannot read the server version from {row:?}"))
    })?;
    let dump_tool = access.version(tool).await?;
    let client_major = pg::major_of(&dump_tool).unwrap_or(0);
    if client_major < major {
        return Err(BackupError::Refused(format!(
            "the sidecar's {dump_tool} is older than the server (Postgres {major}) and cannot dump it: use pgbackup.method=exec, which runs the server's own pg_dump (a server declared by URL needs a pgbackup image whose client is Postgres {major} or newer)"
        )));
    }
    Ok(Server {
        version: version.to_string(),
        major,
        dump_tool,
    })
}

pub(super) async fn databases(
    access: &Access,
    spec: &TargetSpec,
) -> Result<Vec<String>, BackupError> {
    Ok(match &spec.databases {
        Databases::List(l) => l.clone(),
        Databases::All => {
            let all = access
                .query(
                    "postgres",
                    "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY datname",
                )
                .await?;
            let (restoring, dbs): (Vec<String>, Vec<String>) = all
                .into_iter()
                .partition(|d| crate::restore::is_temporary(d));
            if !restoring.is_empty() {
                tracing::info!(
                    databases = %restoring.join(", "),
                    "Left out of the backup: a restore's temporary databases (being loaded, or replaced and not yet dropped)."
                );
            }
            dbs
        }
    })
}

/// A reader passing SQL through [`ForServerFilter`] (see [`filter_for`]).
pub(super) struct Filtered<R> {
    pub(super) inner: R,
    pub(super) filter: Option<ForServerFilter>,
    pub(super) out: Vec<u8>,
    pub(super) pos: usize,
    pub(super) buf: Vec<u8>,
}

impl<R> Filtered<R> {
    pub(super) fn new(inner: R, filter: Option<ForServerFilter>) -> Filtered<R> {
        Filtered {
            inner,
            filter,
            out: Vec::new(),
            pos: 0,
            buf: vec![0; 64 * 1024],
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Filtered<R> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.filter.is_none() && this.pos >= this.out.len() {
            // Off, or ended: straight through (an ended reader returns 0 bytes again).
            return std::pin::Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        loop {
            if this.pos < this.out.len() {
                let n = (this.out.len() - this.pos).min(buf.remaining());
                buf.put_slice(&this.out[this.pos..this.pos + n]);
                this.pos += n;
                return std::task::Poll::Ready(Ok(()));
            }
            let Some(filter) = this.filter.as_mut() else {
                return std::task::Poll::Ready(Ok(()));
            };
            this.out.clear();
            this.pos = 0;
            let mut rb = ReadBuf::new(&mut this.buf);
            std::task::ready!(std::pin::Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            let result = if rb.filled().is_empty() {
                let r = filter.finish(&mut this.out);
                this.filter = None;
                r
            } else {
                filter.feed(rb.filled(), &mut this.out)
            };
            result.map_err(std::io::Error::other)?;
        }
    }
}

/// A newer pg_dump writes statements into plain dumps that an older server rejects (see
/// [`crate::restore::sql::ForServer`]): such a dump (connect mode, the sidecar's newer pg_dump)
/// is adapted to the server so that it loads into its own major with standard tools.
pub(super) fn filter_for(
    format: Format,
    server_major: u32,
    dump_tool: &str,
) -> Option<ForServerFilter> {
    (format != Format::Custom && pg::major_of(dump_tool).is_some_and(|m| m > server_major))
        .then(|| ForServerFilter::new(server_major))
}

/// Streams one program's output into one object; checks the exit code after the stream ended.
#[allow(clippy::too_many_arguments)]
pub(super) async fn dump_object(
    ctx: &Ctx<'_>,
    access: &Access,
    spec: &TargetSpec,
    key: &str,
    program: &str,
    args: &[String],
    label: &str,
    filter: Option<ForServerFilter>,
) -> Result<(u64, pipeline::Uploaded), BackupError> {
    let mut stream = access.stream(program, args).await?;
    let mut filtered = Filtered::new(&mut stream, filter);
    let (counted, raw) = pipeline::counting(&mut filtered);
    // The pipeline borrows the stream; it is finished (exit code) once the upload is done.
    let compressed = pipeline::compress(counted, spec.compression);
    // Encrypted after compression (ciphertext does not compress), before the hash: the
    // SHA-256 is of the stored bytes, so `sha256sum -c` and verify work without the key.
    let uploaded = match &spec.age_recipients {
        None => pipeline::store_stream(ctx.store, key, compressed).await,
        Some(to) => match crate::pipeline::crypt::encrypt(compressed, to) {
            Ok(sealed) => pipeline::store_stream(ctx.store, key, sealed).await,
            Err(e) => Err(UploadError::Read(e)),
        },
    };
    drop(filtered);
    let exit = stream.finish().await?;
    if exit.code != 0 {
        if uploaded.is_ok() {
            let _ = ctx.store.delete(key).await;
        }
        return Err(BackupError::Dump {
            program: program.to_string(),
            database: label.to_string(),
            code: exit.code,
            stderr: exit.stderr,
        });
    }
    let uploaded = uploaded.map_err(|source| BackupError::Upload {
        what: format!("uploading {key}"),
        source,
    })?;
    Ok((raw.load(Ordering::Relaxed), uploaded))
}

/// `--dbname=dbname='…'`: a database name, quoted as a connection parameter, so that no name
/// (`a=b`, `postgres://…`) is ever read as a connection string by pg_dump.
pub fn dbname_arg(db: &str) -> String {
    format!("--dbname={}", pg::conninfo_dbname(db))
}

/// A valid target's settings and its container, which must be running (`None` for a target
/// declared by URL).
pub(super) async fn running<'t>(
    ctx: &Ctx<'_>,
    target: &'t Target,
) -> Result<(&'t TargetSpec, Option<Container>), BackupError> {
    let spec = target
        .settings()
        .ok_or_else(|| BackupError::Invalid(target.target.to_string()))?;
    if target.endpoint.is_some() {
        return Ok((spec, None));
    }
    let c = ctx
        .docker
        .inspect(&target.container_id)
        .await
        .map_err(PgError::from)?;
    if !c.running {
        return Err(BackupError::NotRunning(c.name));
    }
    Ok((spec, Some(c)))
}

/// The manifest entry of an object this backup wrote: `raw` bytes from the program, `up` as
/// stored.
pub(super) fn stored(
    name: String,
    kind: ObjectKind,
    database: Option<String>,
    raw: u64,
    up: crate::pipeline::Uploaded,
) -> Object {
    Object {
        name,
        kind,
        database,
        size: up.size,
        raw_size: raw,
        sha256: up.sha256,
    }
}
