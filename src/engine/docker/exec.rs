//! Programs run inside containers (`docker exec`): their stdout as a byte stream, stdin fed
//! from ours, stderr kept for messages, the exit code at the end.

use super::*;

/// The stdout of a command running inside a container (never a TTY), readable as a byte stream.
/// stderr is kept (its last 64 KiB) for error messages; [`ExecStream::finish`] returns the exit
/// code once stdout has ended.
pub struct ExecStream {
    pub(super) output: std::pin::Pin<
        Box<
            dyn Stream<Item = Result<bollard::container::LogOutput, bollard::errors::Error>> + Send,
        >,
    >,
    pub(super) pending: bytes::Bytes,
    pub(super) stderr: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    pub(super) exec_id: String,
    pub(super) docker: Docker,
    pub(super) ended: bool,
}

pub(super) const STDERR_KEEP: usize = 64 * 1024;

pub(super) fn keep_tail(buf: &mut Vec<u8>, more: &[u8]) {
    buf.extend_from_slice(more);
    if buf.len() > STDERR_KEEP {
        let cut = buf.len() - STDERR_KEEP;
        buf.drain(..cut);
    }
}

/// How a command inside a container ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecExit {
    pub code: i64,
    pub stderr: String,
}

impl tokio::io::AsyncRead for ExecStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use bollard::container::LogOutput;
        use std::task::Poll;
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                let chunk = self.pending.split_to(n);
                buf.put_slice(&chunk);
                return Poll::Ready(Ok(()));
            }
            if self.ended {
                return Poll::Ready(Ok(()));
            }
            match self.output.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => self.ended = true,
                Poll::Ready(Some(Err(e))) => {
                    self.ended = true;
                    return Poll::Ready(Err(std::io::Error::other(format!(
                        "the output stream from the container broke: {e}"
                    ))));
                }
                Poll::Ready(Some(Ok(LogOutput::StdOut { message })))
                | Poll::Ready(Some(Ok(LogOutput::Console { message }))) => self.pending = message,
                Poll::Ready(Some(Ok(LogOutput::StdErr { message }))) => {
                    keep_tail(&mut self.stderr.lock().expect("stderr lock"), &message)
                }
                Poll::Ready(Some(Ok(LogOutput::StdIn { .. }))) => {}
            }
        }
    }
}

impl ExecStream {
    /// Drains what is left of stdout and returns the exit code and stderr.
    pub async fn finish(mut self) -> Result<ExecExit, DockerError> {
        let mut sink = tokio::io::sink();
        let _ = tokio::io::copy(&mut self, &mut sink).await;
        let stderr =
            String::from_utf8_lossy(&self.stderr.lock().expect("stderr lock")).into_owned();
        // The exec may still be marked running for a moment after its streams close.
        for _ in 0..100 {
            let r = timed("inspect_exec", self.docker.inspect_exec(&self.exec_id)).await?;
            if r.running != Some(true) {
                return Ok(ExecExit {
                    code: r.exit_code.unwrap_or(-1),
                    stderr: stderr.trim().to_string(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(DockerError::Timeout {
            call: "inspect_exec (still running)",
        })
    }

    /// stderr so far (for progress or diagnostics).
    pub fn stderr_so_far(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().expect("stderr lock")).into_owned()
    }
}

/// The write end of a command's stdin. `shutdown()` half-closes the connection, which the
/// daemon passes on as end of file.
pub type ExecInput = std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>;

impl DockerClient {
    /// Starts `cmd` in `container` with stdout and stderr attached (no TTY, no stdin).
    /// `env` entries are `NAME=value`: secrets go there, never into `cmd`.
    pub async fn exec(
        &self,
        container: &str,
        cmd: &[String],
        env: &[String],
        user: Option<&str>,
    ) -> Result<ExecStream, DockerError> {
        Ok(self.start(container, cmd, env, user, false).await?.0)
    }

    /// Like [`DockerClient::exec`], with stdin attached too: the caller writes the input and
    /// must read the output concurrently (a command blocked on a full stdout reads no input).
    pub async fn exec_with_stdin(
        &self,
        container: &str,
        cmd: &[String],
        env: &[String],
        user: Option<&str>,
    ) -> Result<(ExecStream, ExecInput), DockerError> {
        let (out, input) = self.start(container, cmd, env, user, true).await?;
        Ok((out, input.expect("stdin attached")))
    }

    /// Starts an exec, retried with backoff (0.5 s, 1 s, 2 s) when the daemon fails in a
    /// transient way before the command ran.
    pub(super) async fn start(
        &self,
        container: &str,
        cmd: &[String],
        env: &[String],
        user: Option<&str>,
        stdin: bool,
    ) -> Result<(ExecStream, Option<ExecInput>), DockerError> {
        let mut delay = Duration::from_millis(500);
        for _ in 0..EXEC_RETRIES {
            match self.start_once(container, cmd, env, user, stdin).await {
                Err(e) if e.is_transient() => {
                    tracing::warn!(container, error = %e, retry_in = ?delay, "Starting a command in the container failed; retrying.");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                other => return other,
            }
        }
        self.start_once(container, cmd, env, user, stdin).await
    }

    pub(super) async fn start_once(
        &self,
        container: &str,
        cmd: &[String],
        env: &[String],
        user: Option<&str>,
        stdin: bool,
    ) -> Result<(ExecStream, Option<ExecInput>), DockerError> {
        let config = bollard::models::ExecConfig {
            attach_stdin: Some(stdin),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(false),
            cmd: Some(cmd.to_vec()),
            env: (!env.is_empty()).then(|| env.to_vec()),
            user: user.map(String::from),
            ..Default::default()
        };
        let created = timed("create_exec", self.docker.create_exec(container, config)).await?;
        let started = timed(
            "start_exec",
            self.docker.start_exec(
                &created.id,
                Some(bollard::exec::StartExecOptions {
                    detach: false,
                    tty: false,
                    output_capacity: None,
                }),
            ),
        )
        .await?;
        match started {
            bollard::exec::StartExecResults::Attached { output, input } => Ok((
                ExecStream {
                    output,
                    pending: bytes::Bytes::new(),
                    stderr: Default::default(),
                    exec_id: created.id,
                    docker: self.docker.clone(),
                    ended: false,
                },
                stdin.then_some(input),
            )),
            bollard::exec::StartExecResults::Detached => Err(DockerError::Timeout {
                call: "start_exec (detached unexpectedly)",
            }),
        }
    }

    /// Runs `cmd` with `input` as its whole stdin (written while the output is read) and
    /// returns how it ended.
    pub async fn exec_feed(
        &self,
        container: &str,
        cmd: &[String],
        input: Vec<u8>,
        user: Option<&str>,
    ) -> Result<ExecExit, DockerError> {
        use tokio::io::AsyncWriteExt;
        let (out, mut stdin) = self.exec_with_stdin(container, cmd, &[], user).await?;
        let writer = tokio::spawn(async move {
            let written = stdin.write_all(&input).await;
            let _ = stdin.shutdown().await;
            written
        });
        let exit = out.finish().await?;
        match writer.await {
            Ok(Err(e)) if exit.code == 0 => Err(DockerError::Stream(format!(
                "writing the command's input failed: {e}"
            ))),
            _ => Ok(exit),
        }
    }

    /// Runs a short command and collects its whole output.
    pub async fn exec_capture(
        &self,
        container: &str,
        cmd: &[String],
        env: &[String],
        user: Option<&str>,
    ) -> Result<(ExecExit, String), DockerError> {
        use tokio::io::AsyncReadExt;
        let mut s = self.exec(container, cmd, env, user).await?;
        let mut out = String::new();
        if let Err(e) = s.read_to_string(&mut out).await {
            return Err(DockerError::Stream(e.to_string()));
        }
        let exit = s.finish().await?;
        Ok((exit, out))
    }
}
