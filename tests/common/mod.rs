//! Helpers for the end-to-end tests: they drive the real Docker engine and the stack that
//! `scripts/test.sh` (`make test`) brings up from compose.yaml + compose.test.yaml.
#![allow(dead_code)]

pub mod fixture;
pub mod receiver;

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

pub fn postgres15_image() -> String {
    postgres_image_of(15)
}

/// Every Postgres major the tests run, oldest first.
pub const MAJORS: [u32; 4] = [13, 15, 17, 18];

/// The image of Postgres `major`: `POSTGRES<major>_IMAGE` (scripts/images.sh exports one per
/// major of [`MAJORS`]), the official `postgres:<major>` otherwise.
pub fn postgres_image_of(major: u32) -> String {
    std::env::var(format!("POSTGRES{major}_IMAGE")).unwrap_or_else(|_| format!("postgres:{major}"))
}

/// Where the data volume of Postgres `major`'s image is mounted: `/var/lib/postgresql/data` up
/// to 17; from 18 on `/var/lib/postgresql`, with PGDATA `/var/lib/postgresql/<major>/docker`.
pub fn data_mount(major: u32) -> &'static str {
    if major >= 18 {
        "/var/lib/postgresql"
    } else {
        "/var/lib/postgresql/data"
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
        self.start_container_with(name, labels, &[])
    }

    /// Like [`Stack::start_container`], with extra `docker run` arguments (before the image).
    pub fn start_container_with(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        extra: &[&str],
    ) -> String {
        self.start_image(name, &postgres_image(), labels, extra)
    }

    /// Starts `image` as a standalone container owned by this test run.
    pub fn start_image(
        &self,
        name: &str,
        image: &str,
        labels: &[(&str, &str)],
        extra: &[&str],
    ) -> String {
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
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(image.to_string());
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

/// The stack's Garage, reached from the host through its published port, with the demo key.
pub fn s3_config(stack: &Stack) -> pgbackup::config::S3Config {
    let port = garage_port(stack);
    let map: std::collections::HashMap<String, String> = [
        ("S3_BUCKET", "pgbackup".to_string()),
        ("S3_ENDPOINT", format!("http://{}", port.trim())),
        ("S3_REGION", "garage".into()),
        ("S3_ACCESS_KEY_ID", "GK5a0696932d5415f414fe611f".into()),
        (
            "S3_SECRET_ACCESS_KEY",
            "9ee5125902ef55aa4941e05962e260ee547efe45d9c1ad3e2c2dfcaccb976025".into(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    pgbackup::config::Config::from_map(&map)
        .expect("test S3 config")
        .destination
        .s3()
        .expect("an S3 destination")
        .clone()
}

/// Garage's published `host:port`. `docker compose port` has been seen to print nothing once
/// under load (two compose calls at once): asked again, briefly.
pub fn garage_port(stack: &Stack) -> String {
    let mut last = None;
    for _ in 0..10 {
        let o = stack.compose(&["port", "garage", "3900"]);
        let port = stdout(&o).trim().to_string();
        if o.status.success() && !port.is_empty() {
            return port;
        }
        last = Some(o);
        std::thread::sleep(Duration::from_millis(500));
    }
    let o = last.expect("asked");
    panic!(
        "docker compose port garage 3900 printed no port: {}{}",
        stdout(&o),
        stderr(&o)
    )
}

/// The stack's bucket through pgbackup's own store (what the sidecar reads and writes).
pub async fn s3_store(cfg: &pgbackup::config::S3Config) -> pgbackup::store::s3::S3Store {
    pgbackup::store::s3::S3Store::new(cfg).await
}

/// Every key under `prefix` in the stack's bucket.
pub fn keys(cfg: &pgbackup::config::S3Config, prefix: &str) -> Vec<String> {
    block_on(async {
        pgbackup::store::catalog::keys(&s3_store(cfg).await, prefix)
            .await
            .unwrap()
    })
}

pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Downloads every object of a backup folder into `dir`; returns their names.
pub fn download(
    cfg: &pgbackup::config::S3Config,
    prefix: &str,
    dir: &std::path::Path,
) -> Vec<String> {
    let mut names = vec![];
    for k in keys(cfg, &format!("{prefix}/")) {
        let name = k.rsplit('/').next().unwrap().to_string();
        std::fs::write(dir.join(&name), get(cfg, &k)).unwrap();
        names.push(name);
    }
    names
}

/// Writes one object (for tests that damage or fabricate backups).
pub fn put(cfg: &pgbackup::config::S3Config, key: &str, data: Vec<u8>) {
    use pgbackup::store::Store;
    block_on(async {
        s3_store(cfg)
            .await
            .put(key, data.into())
            .await
            .unwrap_or_else(|e| panic!("put {key}: {e:?}"));
    })
}

/// Writes many small objects, 32 at a time.
pub fn put_many(cfg: &pgbackup::config::S3Config, objects: Vec<(String, Vec<u8>)>) {
    use futures_util::StreamExt;
    use pgbackup::store::Store;
    block_on(async {
        let store = s3_store(cfg).await;
        let store = &store;
        futures_util::stream::iter(objects)
            .map(|(key, data)| async move {
                store
                    .put(&key, data.into())
                    .await
                    .unwrap_or_else(|e| panic!("put {key}: {e:?}"));
            })
            .buffer_unordered(32)
            .collect::<Vec<()>>()
            .await;
    })
}

pub fn get(cfg: &pgbackup::config::S3Config, key: &str) -> Vec<u8> {
    use pgbackup::store::Store;
    use tokio::io::AsyncReadExt;
    block_on(async {
        let (_, mut body) = s3_store(cfg)
            .await
            .get(key)
            .await
            .unwrap_or_else(|e| panic!("get {key}: {e:?}"));
        let mut out = Vec::new();
        body.read_to_end(&mut out).await.unwrap();
        out
    })
}

/// Open uploads under `prefix` (must be none after any failure).
pub fn uploads_under(cfg: &pgbackup::config::S3Config, prefix: &str) -> Vec<String> {
    use pgbackup::store::Store;
    block_on(async {
        s3_store(cfg)
            .await
            .uploads(prefix)
            .await
            .unwrap()
            .into_iter()
            .map(|u| u.key)
            .collect()
    })
}

/// Multipart uploads still open in the bucket (must be none after any failure).
pub fn open_uploads(cfg: &pgbackup::config::S3Config) -> Vec<String> {
    uploads_under(cfg, "")
}

/// `psql -XAt` in a container; panics on failure.
pub fn psql(container: &str, user: &str, db: &str, sql: &str) -> String {
    docker(&[
        "exec",
        container,
        "psql",
        "-X",
        "-v",
        "ON_ERROR_STOP=1",
        "-At",
        "-U",
        user,
        "-d",
        db,
        "-c",
        sql,
    ])
}

/// Runs a shell pipeline on the host; panics with its output when it fails.
pub fn sh(script: &str) -> String {
    let o = run(Command::new("bash").args(["-euo", "pipefail", "-c", script]));
    assert!(
        o.status.success(),
        "{script}\nfailed: {}{}",
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

impl Stack {
    pub fn container(&self, service: &str) -> String {
        format!("{}-{service}-1", self.project)
    }

    /// Committed backups as `pgctl list --json` reports them.
    /// The sidecar's `/metrics`.
    pub fn metrics(&self) -> String {
        docker(&[
            "exec",
            &self.container("backup"),
            "curl",
            "-fsS",
            "http://127.0.0.1:8080/metrics",
        ])
    }

    pub fn list(&self, target: &str) -> Vec<Value> {
        let o = self.pgctl(&["list", target, "--json"]);
        assert!(o.status.success(), "pgctl list failed: {}", stderr(&o));
        serde_json::from_slice::<Vec<Value>>(&o.stdout).expect("list JSON")
    }

    pub fn network(&self) -> String {
        format!("{}_default", self.project)
    }
}

/// `pgctl run` on the host (the binary under test) against the stack's Garage; killed on drop.
pub struct HostController {
    pub child: std::process::Child,
    pub url: String,
    /// Its log (stderr) so far: read all along, so a full pipe never blocks it.
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl HostController {
    /// Stops it (SIGTERM, as Docker does) and returns its whole log.
    pub fn stop_and_log(&mut self) -> String {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        self.log()
    }

    /// Its log so far; once it has exited, all of it.
    pub fn log(&self) -> String {
        // The reader thread reaches the end of the pipe just after the process is gone.
        std::thread::sleep(Duration::from_millis(200));
        self.log.lock().unwrap().clone()
    }

    /// Waits until this controller's status lists `target`.
    pub fn wait_lists(&self, target: &str) {
        let listed = wait_until(Duration::from_secs(30), || {
            let o = host_pgctl(&["status", "--json", "--controller", &self.url]);
            let v: Value = serde_json::from_slice(&o.stdout).ok()?;
            v["targets"]
                .as_array()?
                .iter()
                .any(|t| t["target"] == target)
                .then_some(())
        });
        assert!(listed.is_some(), "the host controller lists {target}");
    }
}

impl Drop for HostController {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Stack {
    /// `pgctl ARGS` on the host (the binary under test) with the stack's S3 settings and the
    /// local Docker socket, nothing else from the environment.
    pub fn host_pgctl_cmd(&self, args: &[&str]) -> Command {
        let garage = garage_port(self);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgctl"));
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("S3_ENDPOINT", format!("http://{garage}"))
            .env("S3_REGION", "garage")
            .env("S3_BUCKET", "pgbackup")
            .env("S3_ACCESS_KEY_ID", "GK5a0696932d5415f414fe611f")
            .env(
                "S3_SECRET_ACCESS_KEY",
                "9ee5125902ef55aa4941e05962e260ee547efe45d9c1ad3e2c2dfcaccb976025",
            );
        cmd
    }

    /// Starts `pgctl run` on the host with the stack's S3 settings plus `env`.
    pub fn host_controller(&self, env: &[(&str, String)]) -> HostController {
        let http_port = free_port();
        let mut cmd = self.host_pgctl_cmd(&["run"]);
        cmd.env("PGBACKUP_HTTP_ADDR", format!("127.0.0.1:{http_port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start pgctl run on the host");
        let log: std::sync::Arc<std::sync::Mutex<String>> = Default::default();
        let (stderr, l) = (child.stderr.take().expect("piped"), log.clone());
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let mut l = l.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        HostController {
            child,
            url: format!("http://127.0.0.1:{http_port}"),
            log,
        }
    }
}

/// `pgctl ARGS` on the host with the stack's S3 settings, no HTTP server, and `env`.
pub fn host_pgctl_env(s: &Stack, args: &[&str], env: &[(&str, String)]) -> Output {
    let mut cmd = s.host_pgctl_cmd(args);
    cmd.env("PGBACKUP_HTTP_ADDR", "off");
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(&mut cmd)
}

/// `pgctl ARGS` on the host (the binary under test).
pub fn host_pgctl(args: &[&str]) -> Output {
    run(Command::new(env!("CARGO_BIN_EXE_pgctl"))
        .args(args)
        .env("PGBACKUP_HTTP_ADDR", "off")
        .env("DOCKER_HOST", "tcp://127.0.0.1:1"))
}

/// Rows of ~100 bytes, ~300 MB: a dump that is still running a second after it started.
pub const BIG_TABLE: &str = "CREATE TABLE big AS SELECT g, md5(g::text) || md5((g*7)::text) || md5((g*13)::text) AS a FROM generate_series(1, 3000000) g";

/// Waits until Postgres in `container` accepts connections for good (after the entrypoint's
/// init restart).
pub fn wait_ready(container: &str) {
    let ready = || pg_ready(container).then_some(());
    assert!(
        wait_until(Duration::from_secs(60), ready).is_some(),
        "{container} did not become ready"
    );
    // The official entrypoint restarts the server once after init; let it settle.
    std::thread::sleep(Duration::from_secs(2));
    wait_until(Duration::from_secs(30), ready).expect("ready again");
}

impl Stack {
    /// A standalone target holding [`BIG_TABLE`] (no compression, no roles: a backup that is
    /// still uploading seconds after it started), listed by the sidecar; removed when the
    /// returned guard drops.
    pub fn big_target(&self, prefix: &str) -> (String, Cleanup) {
        let name = unique(prefix);
        let guard = Cleanup(name.clone());
        self.start_pg(
            &name,
            &[
                ("pgbackup.enable", "true"),
                ("pgbackup.compression", "none"),
                ("pgbackup.globals", "false"),
            ],
        );
        psql(&name, "postgres", "postgres", BIG_TABLE);
        wait_until(Duration::from_secs(15), || self.target(&name)).expect("listed");
        (name, guard)
    }
}

/// `pg_isready` over TCP inside the container.
/// Waits until `container`'s health check says healthy (two minutes at most).
pub fn wait_healthy(container: &str) {
    let healthy = || {
        (docker(&["inspect", "-f", "{{.State.Health.Status}}", container]) == "healthy")
            .then_some(())
    };
    wait_until(Duration::from_secs(120), healthy)
        .unwrap_or_else(|| panic!("{container} did not become healthy"));
}

pub fn pg_ready(container: &str) -> bool {
    run(Command::new("docker").args(["exec", container, "pg_isready", "-q", "-h", "127.0.0.1"]))
        .status
        .success()
}

impl Stack {
    /// A standalone Postgres with `labels` on the stack's network (so the sidecar reaches it by
    /// name in connect mode), ready for queries.
    pub fn start_pg(&self, name: &str, labels: &[(&str, &str)]) {
        self.start_pg_image(name, &postgres_image(), labels);
    }

    /// [`Stack::start_pg`] with another image (`postgres15_image()`).
    pub fn start_pg_image(&self, name: &str, image: &str, labels: &[(&str, &str)]) {
        self.start_image(name, image, labels, &["--network", &self.network()]);
        wait_ready(name);
    }
}

/// A second compose project in the scratch directory (the way a user's own stack sits next to
/// others on one host), from `compose` text; `down -v` and its directory removed when dropped.
pub struct Project {
    pub project: String,
    pub dir: std::path::PathBuf,
    /// The compose files, in order (`compose.yaml`, then an override if any).
    files: Vec<&'static str>,
}

impl Project {
    pub fn new(prefix: &str, compose: &str) -> Project {
        let scratch = std::env::var("PGBACKUP_E2E_SCRATCH")
            .unwrap_or_else(|_| "/tmp/pgbackup-e2e-scratch".into());
        let project = unique(prefix).to_lowercase();
        let dir = std::path::Path::new(&scratch).join(&project);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("compose.yaml"), compose).unwrap();
        Project {
            project,
            dir,
            files: vec!["compose.yaml"],
        }
    }

    /// [`Project::new`] with a `compose.override.yaml` too (what Compose merges by itself when
    /// run in the directory without `-f`). The directory's name is the project's name.
    pub fn with_override(prefix: &str, compose: &str, over: &str) -> Project {
        let mut p = Project::new(prefix, compose);
        std::fs::write(p.dir.join("compose.override.yaml"), over).unwrap();
        p.files.push("compose.override.yaml");
        p
    }

    pub fn compose(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("docker");
        cmd.args(["compose", "-p", &self.project]);
        for f in &self.files {
            cmd.args(["-f", f]);
        }
        run(cmd.args(args).current_dir(&self.dir))
    }

    /// `pgctl ARGS` in the project's `backup` service.
    pub fn pgctl(&self, args: &[&str]) -> Output {
        let mut full = vec!["exec", "-T", "backup", "pgctl"];
        full.extend_from_slice(args);
        self.compose(&full)
    }

    pub fn container(&self, service: &str) -> String {
        format!("{}-{service}-1", self.project)
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = self.compose(&["down", "-v", "-t", "1"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Stack {
    /// The image the stack's sidecar runs (the one under test).
    pub fn sidecar_image(&self) -> String {
        docker(&[
            "inspect",
            "-f",
            "{{.Config.Image}}",
            &self.container("backup"),
        ])
    }
}

/// The ```{lang} blocks under the README heading `### {heading}` (or `## {heading}`, up to
/// the next heading), in order.
pub fn readme_blocks(heading: &str, lang: &str) -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find(&format!("\n### {heading}\n"))
        .or_else(|| readme.find(&format!("\n## {heading}\n")))
        .unwrap_or_else(|| panic!("README has no section {heading:?}"));
    let section = &readme[start + 1..];
    let end = section[4..]
        .find("\n#")
        .map(|e| e + 4)
        .unwrap_or(section.len());
    let fence = format!("```{lang}\n");
    let mut blocks = Vec::new();
    let mut rest = &section[..end];
    while let Some(a) = rest.find(&fence) {
        let body = &rest[a + fence.len()..];
        let b = body.find("```").expect("closed block");
        blocks.push(body[..b].to_string());
        rest = &body[b..];
    }
    blocks
}

/// Samples every process's arguments in `containers` until stopped; the samples.
pub struct Processes {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    seen: std::sync::Arc<std::sync::Mutex<String>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Processes {
    pub fn watch(containers: Vec<String>) -> Processes {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen: std::sync::Arc<std::sync::Mutex<String>> = Default::default();
        let (st, se) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(std::sync::atomic::Ordering::Relaxed) {
                for c in &containers {
                    let o = std::process::Command::new("docker")
                        .args(["top", c, "-eo", "pid,args"])
                        .output()
                        .unwrap();
                    se.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&o.stdout));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Processes {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    pub fn stop(mut self) -> String {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        self.seen.lock().unwrap().clone()
    }
}
