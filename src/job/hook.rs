//! Hooks (`pgbackup.hook.pre_backup`, `pgbackup.hook.post_backup`): a command run inside the
//! target's container before and after its backup, within `pgbackup.hook.timeout`.
//!
//! The command's words are passed as they are (split like a shell would, never re-read by one):
//! a user who wants pipes or variables writes `sh -c '…'`. A small `sh` wrapper reports the
//! command's PID first, so a hook past its timeout is stopped (SIGTERM, then SIGKILL) rather than
//! left running in the database's container.

use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::engine::docker::DockerClient;

/// Which hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    PreBackup,
    PostBackup,
}

impl Point {
    pub fn label(self) -> &'static str {
        match self {
            Point::PreBackup => "pgbackup.hook.pre_backup",
            Point::PostBackup => "pgbackup.hook.post_backup",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Point::PreBackup => "pre_backup",
            Point::PostBackup => "post_backup",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookError {
    #[error("{point} hook `{command}` could not be started in {container}: {reason}")]
    Start {
        point: &'static str,
        command: String,
        container: String,
        reason: String,
    },
    #[error("{point} hook `{command}` failed (exit code {code}){}", shown_output(.output))]
    Failed {
        point: &'static str,
        command: String,
        code: i64,
        output: String,
    },
    #[error("{point} hook `{command}` did not finish within {} (pgbackup.hook.timeout) and was stopped{}", humantime::format_duration(*.timeout), shown_output(.output))]
    TimedOut {
        point: &'static str,
        command: String,
        timeout: Duration,
        output: String,
    },
}

fn shown_output(output: &str) -> String {
    if output.is_empty() {
        String::new()
    } else {
        format!(": {output}")
    }
}

/// How much of a hook's output is kept for messages (the end of it).
const OUTPUT_KEEP: usize = 4096;

const PID_MARK: &str = "pgbackup-hook-pid=";

/// The command as run: `sh` reports its PID on stderr, then `exec`s the user's words unchanged.
pub fn wrapped(command: &[String]) -> Vec<String> {
    let mut v = vec![
        "sh".to_string(),
        "-c".to_string(),
        format!("echo {PID_MARK}$$ >&2; exec \"$@\""),
        "pgbackup-hook".to_string(),
    ];
    v.extend(command.iter().cloned());
    v
}

/// The PID line taken out of stderr: (pid, the rest).
pub fn split_pid(stderr: &str) -> (Option<u32>, String) {
    let mut pid = None;
    let rest: Vec<&str> = stderr
        .lines()
        .filter(|l| match l.strip_prefix(PID_MARK) {
            Some(p) if pid.is_none() => {
                pid = p.trim().parse().ok();
                false
            }
            _ => true,
        })
        .collect();
    (pid, rest.join("\n"))
}

/// stdout and stderr together, trimmed to their last [`OUTPUT_KEEP`] bytes.
fn combined(stdout: &[u8], stderr: &str) -> String {
    let out = String::from_utf8_lossy(stdout);
    let both = [out.trim(), stderr.trim()]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    if both.len() <= OUTPUT_KEEP {
        return both;
    }
    let mut cut = both.len() - OUTPUT_KEEP;
    while !both.is_char_boundary(cut) {
        cut += 1;
    }
    format!("…{}", &both[cut..])
}

/// Runs `command` in `container` with `env` (`NAME=value`), as its image's default user.
/// Returns the output on exit code 0.
pub async fn run(
    docker: &DockerClient,
    container: &str,
    point: Point,
    command: &[String],
    env: &[String],
    timeout: Duration,
) -> Result<String, HookError> {
    let shown = shell_words::join(command);
    let start_err = |reason: String| HookError::Start {
        point: point.name(),
        command: shown.clone(),
        container: container.to_string(),
        reason,
    };
    let mut stream = docker
        .exec(container, &wrapped(command), env, None)
        .await
        .map_err(|e| start_err(e.to_string()))?;
    let mut stdout = Vec::new();
    let read = tokio::time::timeout(timeout, async {
        let mut buf = [0u8; 8192];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    stdout.extend_from_slice(&buf[..n]);
                    if stdout.len() > 2 * OUTPUT_KEEP {
                        stdout.drain(..stdout.len() - OUTPUT_KEEP);
                    }
                }
            }
        }
    })
    .await;
    if read.is_err() {
        let (pid, stderr) = split_pid(&stream.stderr_so_far());
        if let Some(pid) = pid {
            stop(docker, container, pid).await;
        }
        return Err(HookError::TimedOut {
            point: point.name(),
            command: shown,
            timeout,
            output: combined(&stdout, &stderr),
        });
    }
    let exit = stream
        .finish()
        .await
        .map_err(|e| start_err(e.to_string()))?;
    let (_, stderr) = split_pid(&exit.stderr);
    let output = combined(&stdout, &stderr);
    // 126/127: the wrapper's `exec` found no such program (or could not run it).
    if exit.code == 127 || exit.code == 126 {
        return Err(start_err(format!(
            "the program was not found or is not executable (exit code {}){}",
            exit.code,
            shown_output(&output)
        )));
    }
    if exit.code != 0 {
        return Err(HookError::Failed {
            point: point.name(),
            command: shown,
            code: exit.code,
            output,
        });
    }
    Ok(output)
}

/// SIGTERM to a hook past its timeout, SIGKILL five seconds later if it is still there.
async fn stop(docker: &DockerClient, container: &str, pid: u32) {
    let script = "kill -TERM \"$1\" 2>/dev/null || exit 0; i=0; while kill -0 \"$1\" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done; kill -KILL \"$1\" 2>/dev/null; exit 0";
    let cmd: Vec<String> = ["sh", "-c", script, "pgbackup-stop", &pid.to_string()]
        .into_iter()
        .map(String::from)
        .collect();
    if let Err(e) = docker.exec_capture(container, &cmd, &[], None).await {
        tracing::warn!(container, pid, error = %e, "Could not stop a hook past its timeout.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wrapper_passes_the_words_unchanged_after_reporting_its_pid() {
        let cmd = vec![
            "psql".to_string(),
            "-c".into(),
            "select '$HOME; rm -rf /'".into(),
        ];
        let w = wrapped(&cmd);
        assert_eq!(&w[..2], ["sh", "-c"]);
        assert_eq!(w[2], "echo pgbackup-hook-pid=$$ >&2; exec \"$@\"");
        assert_eq!(w[3], "pgbackup-hook");
        assert_eq!(&w[4..], &cmd[..]);
    }

    #[test]
    fn the_pid_line_is_read_and_left_out_of_the_output() {
        let (pid, rest) = split_pid("pgbackup-hook-pid=42\nwarning: x\npgbackup-hook-pid=7");
        assert_eq!(pid, Some(42));
        assert_eq!(rest, "warning: x\npgbackup-hook-pid=7");
        assert_eq!(split_pid("no pid here"), (None, "no pid here".to_string()));
    }

    #[test]
    fn output_keeps_its_end() {
        let long = "x".repeat(10_000) + "END";
        let out = combined(long.as_bytes(), "err");
        assert!(out.ends_with("END\nerr"), "{}", &out[out.len() - 20..]);
        assert!(out.len() <= OUTPUT_KEEP + 4);
        assert_eq!(combined(b" out \n", ""), "out");
    }

    #[test]
    fn errors_name_the_hook_the_command_and_the_output() {
        let e = HookError::Failed {
            point: Point::PreBackup.name(),
            command: "pg_isready -q".into(),
            code: 2,
            output: "no response".into(),
        };
        assert_eq!(
            e.to_string(),
            "pre_backup hook `pg_isready -q` failed (exit code 2): no response"
        );
        let t = HookError::TimedOut {
            point: "post_backup",
            command: "sleep 60".into(),
            timeout: Duration::from_secs(2),
            output: String::new(),
        };
        assert_eq!(
            t.to_string(),
            "post_backup hook `sleep 60` did not finish within 2s (pgbackup.hook.timeout) and was stopped"
        );
    }
}
