//! Running Postgres client programs for a target: inside its container through the Docker exec
//! API (`exec`), or in the sidecar over the network (`connect`, password by environment only).

use std::process::Stdio;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::process::{Child, ChildStdout};

use crate::config::Secret;
use crate::config::endpoint::Endpoint;
use crate::engine::docker::{Container, DockerClient, DockerError, ExecExit, ExecStream};

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error("cannot start {program} in the sidecar: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} failed (exit code {code}): {stderr}")]
    Failed {
        program: String,
        code: i64,
        stderr: String,
    },
    #[error("{0}")]
    Other(String),
}

/// Running a query in a database of the target: a port, so the decisions around it (a
/// restore's undo) are tested with a fake. [`Access`] is the real one (`psql` in the target or
/// in the sidecar).
#[async_trait::async_trait]
pub trait Query: Send + Sync {
    /// The rows of `sql` in `database`, one string per row.
    async fn query(&self, database: &str, sql: &str) -> Result<Vec<String>, PgError>;
}

#[async_trait::async_trait]
impl Query for Access {
    async fn query(&self, database: &str, sql: &str) -> Result<Vec<String>, PgError> {
        Access::query(self, database, sql).await
    }
}

/// The stdin of a client program started with [`Access::session`], in the target or the sidecar.
pub type PgInput = std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>;

/// How to reach a target's Postgres.
#[derive(Clone)]
pub enum Access {
    Exec {
        docker: DockerClient,
        container: String,
        user: String,
    },
    Connect {
        host: String,
        port: u16,
        user: String,
        password: Option<Secret>,
        /// More libpq variables (`PGSSLMODE`, `PGSSLROOTCERT`…).
        env: Vec<(&'static str, String)>,
    },
}

impl Access {
    /// The server a connection URL names, from the sidecar.
    pub fn to(e: &Endpoint) -> Access {
        Access::Connect {
            host: e.host.clone(),
            port: e.port,
            user: e.user.clone(),
            password: e.password.clone(),
            env: e.env.clone(),
        }
    }

    pub fn user(&self) -> &str {
        match self {
            Access::Exec { user, .. } | Access::Connect { user, .. } => user,
        }
    }

    /// Starts `program -U <user> args…` with its stdout as a stream.
    pub async fn stream(&self, program: &str, args: &[String]) -> Result<PgStream, PgError> {
        let mut argv = vec!["-U".to_string(), self.user().to_string()];
        argv.extend_from_slice(args);
        self.spawn(program, &argv).await
    }

    /// The version line of a client program where it runs (the target or the sidecar).
    pub async fn version(&self, program: &str) -> Result<String, PgError> {
        let s = self.spawn(program, &["--version".to_string()]).await?;
        Ok(collect(program, s).await?.trim().to_string())
    }

    async fn spawn(&self, program: &str, args: &[String]) -> Result<PgStream, PgError> {
        Ok(self.spawn_with(program, args, false).await?.0)
    }

    /// `psql` reading a script from its stdin as this access's user on `database`
    /// ([`psql_script_argv`]): stop at the first error, results discarded.
    pub async fn script(&self, database: &str) -> Result<(PgStream, PgInput), PgError> {
        let argv = psql_script_argv(self.user(), database);
        let (out, input) = self.spawn_with("psql", &argv[1..], true).await?;
        Ok((out, input.expect("stdin piped")))
    }

    /// `program args…` (no `-U`) with its stdin piped: the caller writes its input.
    pub async fn program_with_stdin(
        &self,
        program: &str,
        args: &[String],
    ) -> Result<(PgStream, PgInput), PgError> {
        let (out, input) = self.spawn_with(program, args, true).await?;
        Ok((out, input.expect("stdin piped")))
    }

    /// Runs `sql` as a [`Access::script`] on `database` and waits for psql to end.
    pub async fn feed(&self, database: &str, sql: &[u8]) -> Result<ExecExit, PgError> {
        use tokio::io::AsyncWriteExt;
        let (mut out, mut input) = self.script(database).await?;
        // Its output is read while the script is written: psql blocks when nobody reads.
        let drain = tokio::spawn(async move {
            let mut sink = Vec::new();
            let _ = out.read_to_end(&mut sink).await;
            out.finish().await
        });
        let sent = async {
            input.write_all(sql).await?;
            input.shutdown().await
        }
        .await;
        drop(input);
        let exit = drain
            .await
            .map_err(|e| PgError::Other(format!("psql's output task failed: {e}")))??;
        match sent {
            Err(e) if exit.code == 0 => Err(PgError::Other(format!(
                "sending the script to psql failed: {e}"
            ))),
            _ => Ok(exit),
        }
    }

    /// `psql` reading SQL from its stdin as this access's user in `database`, unaligned and
    /// tuples-only (one row per line), stopping at the first error: a session the caller
    /// drives, reading its output while writing (see [`crate::job::backup`]'s snapshot facts).
    pub async fn session(&self, database: &str) -> Result<(PgStream, PgInput), PgError> {
        let args = [
            "-X",
            "-A",
            "-t",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-U",
            self.user(),
            "-d",
            &conninfo_dbname(database),
        ]
        .map(String::from);
        let (out, input) = self.spawn_with("psql", &args, true).await?;
        Ok((out, input.expect("stdin piped")))
    }

    async fn spawn_with(
        &self,
        program: &str,
        args: &[String],
        stdin: bool,
    ) -> Result<(PgStream, Option<PgInput>), PgError> {
        let mut argv = vec![program.to_string()];
        argv.extend_from_slice(args);
        match self {
            Access::Exec {
                docker, container, ..
            } => {
                if stdin {
                    let (out, input) = docker.exec_with_stdin(container, &argv, &[], None).await?;
                    Ok((PgStream::Exec(out), Some(input)))
                } else {
                    let out = docker.exec(container, &argv, &[], None).await?;
                    Ok((PgStream::Exec(out), None))
                }
            }
            Access::Connect {
                host,
                port,
                password,
                env,
                ..
            } => {
                let mut cmd = tokio::process::Command::new(program);
                cmd.args(&argv[1..])
                    .env("PGHOST", host)
                    .env("PGPORT", port.to_string())
                    .env("PGCONNECT_TIMEOUT", "10")
                    .env_remove("PGPASSWORD");
                // Only what the URL says: a sidecar's own PGSSLMODE… must not change it.
                for var in [
                    "PGSSLMODE",
                    "PGSSLROOTCERT",
                    "PGSSLCERT",
                    "PGSSLKEY",
                    "PGSSLCRL",
                ] {
                    cmd.env_remove(var);
                }
                for (k, v) in env {
                    cmd.env(k, v);
                }
                if let Some(p) = password {
                    // Environment, never argv: `ps` shows arguments to everyone.
                    cmd.env("PGPASSWORD", p.expose());
                }
                let (out, input) = local(program, cmd, stdin)?;
                Ok((out, input.map(|i| Box::pin(i) as PgInput)))
            }
        }
    }

    /// Runs `program args…` and returns its stdout; a non-zero exit is an error with stderr.
    pub async fn capture(&self, program: &str, args: &[String]) -> Result<String, PgError> {
        collect(program, self.stream(program, args).await?).await
    }

    /// One SQL query through psql, unaligned and tuples-only: one row per line.
    pub async fn query(&self, database: &str, sql: &str) -> Result<Vec<String>, PgError> {
        let out = self
            .capture(
                "psql",
                &[
                    "-X".into(),
                    "-A".into(),
                    "-t".into(),
                    "-q".into(),
                    "-v".into(),
                    "ON_ERROR_STOP=1".into(),
                    "-d".into(),
                    conninfo_dbname(database),
                    "-c".into(),
                    sql.into(),
                ],
            )
            .await?;
        Ok(out
            .lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect())
    }
}

/// `psql` reading a script from stdin as `user` on `database`: stop at the first error, no
/// psqlrc, query results discarded (`\echo` still prints).
pub fn psql_script_argv(user: &str, database: &str) -> Vec<String> {
    [
        "psql",
        "-X",
        "-q",
        "-o",
        "/dev/null",
        "-v",
        "ON_ERROR_STOP=1",
        "-U",
        user,
        "-d",
        database,
    ]
    .map(String::from)
    .to_vec()
}

/// A psql session kept open (in the target, or from the sidecar) for as long as something must
/// hold: a temporary replication slot, a restore's liveness mark. The server releases what the
/// session holds when it ends: on [`Held::release`], or when pgctl dies and the exec connection
/// closes (or its own psql child is killed with it), so nothing it holds can outlive pgctl.
pub struct Held {
    input: PgInput,
    output: tokio::task::JoinHandle<()>,
}

/// Printed by a held session once its SQL ran.
const HELD: &[u8] = b"pgbackup:held";

impl Held {
    /// Runs `sql` (which must succeed) in a session of the access's user on `database`, and
    /// keeps it open.
    pub async fn open(access: &Access, database: &str, sql: &str) -> Result<Held, PgError> {
        use tokio::io::AsyncWriteExt;
        let (mut out, mut input) = access.session(database).await?;
        let script = format!("{sql}\n\\echo {}\n", String::from_utf8_lossy(HELD));
        let io = |e: std::io::Error| PgError::Other(format!("holding a session: {e}"));
        input.write_all(script.as_bytes()).await.map_err(io)?;
        input.flush().await.map_err(io)?;
        let mut seen = Vec::new();
        let mut chunk = [0u8; 1024];
        let ran = tokio::time::timeout(std::time::Duration::from_secs(60), async {
            loop {
                let n = out.read(&mut chunk).await?;
                if n == 0 {
                    return Ok::<bool, std::io::Error>(false);
                }
                seen.extend_from_slice(&chunk[..n]);
                if seen.windows(HELD.len()).any(|w| w == HELD) {
                    return Ok(true);
                }
            }
        })
        .await;
        if !matches!(ran, Ok(Ok(true))) {
            let exit = out.finish().await?;
            return Err(PgError::Failed {
                program: "psql".into(),
                code: exit.code,
                stderr: exit.stderr,
            });
        }
        // Drained so psql never blocks; how it ends does not matter.
        let output = tokio::spawn(async move {
            let _ = out.finish().await;
        });
        Ok(Held { input, output })
    }

    /// Ends the session: the server releases what it held.
    pub async fn release(mut self) {
        use tokio::io::AsyncWriteExt;
        let _ = self.input.shutdown().await;
        drop(self.input);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(30), self.output).await;
    }
}

/// The version line of a client program in the sidecar itself.
pub async fn local_version(program: &str) -> Result<String, PgError> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.arg("--version");
    Ok(collect(program, local(program, cmd, false)?.0)
        .await?
        .trim()
        .to_string())
}

/// The password the official image gives `POSTGRES_USER` (`POSTGRES_PASSWORD`, or the file
/// `POSTGRES_PASSWORD_FILE` names, read in the container), for connecting to it from the
/// sidecar; `None` when it has neither (trust, or another user's credentials).
pub async fn container_password(
    docker: &DockerClient,
    c: &Container,
) -> Result<Option<Secret>, PgError> {
    if let Some(p) = c.env.get("POSTGRES_PASSWORD").filter(|p| !p.is_empty()) {
        return Ok(Some(Secret::new(p.clone())));
    }
    if let Some(path) = c.env.get("POSTGRES_PASSWORD_FILE") {
        let (exit, out) = docker
            .exec_capture(&c.id, &["cat".to_string(), path.clone()], &[], None)
            .await?;
        if exit.code != 0 {
            return Err(PgError::Other(format!(
                "cannot read POSTGRES_PASSWORD_FILE={path} in container {}: {}",
                c.name, exit.stderr
            )));
        }
        return Ok(Some(Secret::new(
            out.trim_end_matches(['\n', '\r']).to_string(),
        )));
    }
    Ok(None)
}

/// Starts `program args…` in the sidecar with stdin piped: the caller writes its input.
pub fn local_with_stdin(
    program: &str,
    args: &[String],
) -> Result<(PgStream, tokio::process::ChildStdin), PgError> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args);
    let (stream, stdin) = local(program, cmd, true)?;
    Ok((stream, stdin.expect("piped stdin")))
}

/// Spawns a client program in the sidecar, its stderr drained concurrently (its last 64 KiB
/// kept) so a chatty stderr never blocks it.
fn local(
    program: &str,
    mut cmd: tokio::process::Command,
    stdin: bool,
) -> Result<(PgStream, Option<tokio::process::ChildStdin>), PgError> {
    cmd.stdin(if stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|source| PgError::Spawn {
        program: program.to_string(),
        source,
    })?;
    let input = child.stdin.take();
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr_buf = Arc::new(Mutex::new(Vec::new()));
    let mut stderr = child.stderr.take().expect("piped stderr");
    let sink = stderr_buf.clone();
    let stderr_task = tokio::spawn(async move {
        let mut chunk = [0u8; 8192];
        while let Ok(n) = stderr.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            let mut b = sink.lock().expect("stderr lock");
            b.extend_from_slice(&chunk[..n]);
            let len = b.len();
            if len > 64 * 1024 {
                b.drain(..len - 64 * 1024);
            }
        }
    });
    Ok((
        PgStream::Local {
            child,
            stdout,
            stderr: stderr_buf,
            stderr_task,
        },
        input,
    ))
}

/// stdout of a running client program, exec'd or local.
pub enum PgStream {
    Exec(ExecStream),
    Local {
        child: Child,
        stdout: ChildStdout,
        stderr: Arc<Mutex<Vec<u8>>>,
        stderr_task: tokio::task::JoinHandle<()>,
    },
}

impl AsyncRead for PgStream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            PgStream::Exec(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            PgStream::Local { stdout, .. } => std::pin::Pin::new(stdout).poll_read(cx, buf),
        }
    }
}

impl PgStream {
    /// Waits for the program to end (after its stdout ended) and returns exit code and stderr.
    pub async fn finish(self) -> Result<ExecExit, PgError> {
        match self {
            PgStream::Exec(s) => Ok(s.finish().await?),
            PgStream::Local {
                mut child,
                mut stdout,
                stderr,
                stderr_task,
            } => {
                let _ = tokio::io::copy(&mut stdout, &mut tokio::io::sink()).await;
                let status = child
                    .wait()
                    .await
                    .map_err(|e| PgError::Other(format!("waiting for the client failed: {e}")))?;
                let _ = stderr_task.await;
                let text = String::from_utf8_lossy(&stderr.lock().expect("stderr lock"))
                    .trim()
                    .to_string();
                Ok(ExecExit {
                    code: status.code().map(i64::from).unwrap_or(-1),
                    stderr: text,
                })
            }
        }
    }
}

/// Reads a program's whole stdout; a non-zero exit is an error carrying its stderr.
async fn collect(program: &str, mut s: PgStream) -> Result<String, PgError> {
    let mut out = String::new();
    s.read_to_string(&mut out)
        .await
        .map_err(|e| PgError::Other(format!("reading {program}'s output failed: {e}")))?;
    let exit = s.finish().await?;
    if exit.code != 0 {
        return Err(PgError::Failed {
            program: program.to_string(),
            code: exit.code,
            stderr: exit.stderr,
        });
    }
    Ok(out)
}

/// `dbname='…'` (backslash and quote escaped): how client programs are given a database name
/// that they must not read as a connection string.
pub fn conninfo_dbname(db: &str) -> String {
    format!("dbname='{}'", db.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// `pg_dump (PostgreSQL) 17.2 (Debian 17.2-1)` → 17. Also reads `server_version_num` (170002).
pub fn major_of(version: &str) -> Option<u32> {
    let v = version.trim();
    if let Ok(num) = v.parse::<u32>() {
        // server_version_num: 170002 → 17, 90624 → 9 (9.6: majors before 10 had two parts).
        return Some(num / 10_000);
    }
    v.split_whitespace()
        .find_map(|w| w.split('.').next()?.parse::<u32>().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("app", "dbname='app'")]
    #[case("host=evil dbname=x", "dbname='host=evil dbname=x'")]
    #[case("it's \\ odd", "dbname='it\\'s \\\\ odd'")]
    fn database_names_are_quoted_as_parameters(#[case] db: &str, #[case] expected: &str) {
        assert_eq!(conninfo_dbname(db), expected);
    }

    #[rstest]
    #[case("pg_dump (PostgreSQL) 17.2 (Debian 17.2-1.pgdg120+1)", Some(17))]
    #[case("pg_dump (PostgreSQL) 15.18", Some(15))]
    #[case("170002", Some(17))]
    #[case("150018", Some(15))]
    #[case("90624", Some(9))]
    #[case("nonsense", None)]
    fn majors(#[case] v: &str, #[case] expected: Option<u32>) {
        assert_eq!(major_of(v), expected);
    }
}
