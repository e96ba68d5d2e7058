//! Helpers for the end-to-end tests: they drive the real Docker engine and the stack that
//! `scripts/test.sh` (`make test`) brings up from compose.yaml + compose.test.yaml.
#![allow(dead_code)]

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The compose project under test. Without one, the tests fail under CI (`CI=true`) and are
/// skipped loudly elsewhere (run `make test`).
pub fn project() -> Option<String> {
    match std::env::var("PGBACKUP_E2E_PROJECT") {
        Ok(p) if !p.is_empty() => Some(p),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI=true but PGBACKUP_E2E_PROJECT is unset: run the tests through `make test`")
        }
        _ => {
            eprintln!("SKIPPED: end-to-end tests need the stack; run `make test`");
            None
        }
    }
}

#[macro_export]
macro_rules! stack {
    () => {
        match common::project() {
            Some(p) => common::Stack::new(p),
            None => return,
        }
    };
}

pub struct Stack {
    pub project: String,
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `docker ARGS`, panicking with its output when it fails.
pub fn docker(args: &[&str]) -> String {
    let o = run(Command::new("docker").args(args));
    assert!(
        o.status.success(),
        "docker {args:?} failed: {}{}",
        stdout(&o),
        stderr(&o)
    );
    stdout(&o).trim().to_string()
}

pub fn wait_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn postgres_image() -> String {
    std::env::var("POSTGRES_IMAGE").unwrap_or_else(|_| "postgres:17".into())
}

/// A unique name for containers a test starts by itself.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{}-{nanos:x}", std::process::id())
}

impl Stack {
    pub fn new(project: String) -> Stack {
        Stack { project }
    }

    pub fn compose_cmd(&self) -> Command {
        let mut c = Command::new("docker");
        c.args([
            "compose",
            "-p",
            &self.project,
            "-f",
            "compose.yaml",
            "-f",
            "compose.test.yaml",
        ]);
        c.current_dir(env!("CARGO_MANIFEST_DIR"));
        c
    }

    pub fn compose(&self, args: &[&str]) -> Output {
        run(self.compose_cmd().args(args))
    }

    /// `pgctl ARGS` inside the stack's sidecar (`docker compose exec backup pgctl …` by its
    /// container name, since other tests start one-off `backup` containers next to it).
    pub fn pgctl(&self, args: &[&str]) -> Output {
        let container = format!("{}-backup-1", self.project);
        let mut full = vec!["exec", &container, "pgctl"];
        full.extend_from_slice(args);
        run(Command::new("docker").args(&full))
    }

    pub fn status(&self) -> Value {
        let o = self.pgctl(&["status", "--json"]);
        assert!(o.status.success(), "pgctl status failed: {}", stderr(&o));
        serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("status is not JSON ({e}): {}", stdout(&o)))
    }

    /// The status entry of `target` (e.g. `pgbackup-e2e/db` or a container name), if listed.
    pub fn target(&self, target: &str) -> Option<Value> {
        self.status()["targets"]
            .as_array()
            .expect("targets array")
            .iter()
            .find(|t| t["target"] == target)
            .cloned()
    }

    /// Starts a standalone Postgres container with `labels`, owned by this test run (removed by
    /// `make test`'s clean-up even if the test panics).
    pub fn start_container(&self, name: &str, labels: &[(&str, &str)]) -> String {
        let owner = format!("pgbackup-e2e.owner={}", self.project);
        let mut args: Vec<String> = vec![
            "run".into(),
            "-d".into(),
            "--name".into(),
            name.into(),
            "--label".into(),
            owner,
            "-e".into(),
            "POSTGRES_PASSWORD=e2e-password".into(),
        ];
        for (k, v) in labels {
            args.push("--label".into());
            args.push(format!("{k}={v}"));
        }
        args.push(postgres_image());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        docker(&refs)
    }
}

/// Removes a container when dropped, so a failing assertion does not leak it.
pub struct Cleanup(pub String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", "-v", &self.0])
            .output();
    }
}
