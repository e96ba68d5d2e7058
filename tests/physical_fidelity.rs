//! End-to-end: physical backups of the kitchen-sink fixture on a busy server (WAL switched and
//! checkpoints forced in a loop during every backup), restored by `pgctl restore --physical` and
//! by the README's by-hand recipe, with `PGDATA` a subdirectory of the volume
//! (`/var/lib/postgresql/data/pgdata`). Both restores must equal the source's fingerprint.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::fixture::*;
use common::{Stack, docker, psql, run, stderr, stdout, wait_until};

const COMPOSE: &str = "name: PROJECT
services:
  db:
    image: IMAGE
    environment:
      POSTGRES_PASSWORD: scratch-password
      PGDATA: /var/lib/postgresql/data/pgdata   # a subdirectory of the volume
    volumes:
      - pgdata:/var/lib/postgresql/data
      - FIXTURE:/docker-entrypoint-initdb.d:ro
    healthcheck:
      test: [\"CMD-SHELL\", \"pg_isready -q -U postgres -h 127.0.0.1\"]
      interval: 1s
      timeout: 5s
      retries: 300
    labels:
      pgbackup.enable: \"true\"
      pgbackup.schedule: \"off\"
      pgbackup-e2e.owner: OWNER

volumes:
  pgdata:
";

struct Scratch {
    project: String,
    dir: PathBuf,
}

impl Scratch {
    fn new(stack: &Stack) -> Scratch {
        let root = std::env::var("PGBACKUP_E2E_SCRATCH")
            .unwrap_or_else(|_| "/tmp/pgbackup-e2e-scratch".into());
        let project = common::unique(&format!("{}-swap", stack.project));
        let dir = PathBuf::from(root).join(&project);
        std::fs::create_dir_all(&dir).unwrap();
        let text = COMPOSE
            .replace("PROJECT", &project)
            .replace("IMAGE", &common::postgres_image())
            .replace("FIXTURE", FIXTURE)
            .replace("OWNER", &stack.project);
        std::fs::write(dir.join("compose.yaml"), text).unwrap();
        let s = Scratch { project, dir };
        let o = s.compose(&["up", "-d", "--wait"]);
        assert!(o.status.success(), "compose up: {}", stderr(&o));
        s
    }

    fn compose(&self, args: &[&str]) -> Output {
        run(Command::new("docker")
            .args(["compose"])
            .args(args)
            .current_dir(&self.dir))
    }

    fn db(&self) -> String {
        format!("{}-db-1", self.project)
    }

    fn wait_healthy(&self) {
        let healthy = || {
            (docker(&["inspect", "-f", "{{.State.Health.Status}}", &self.db()]) == "healthy")
                .then_some(())
        };
        wait_until(Duration::from_secs(120), healthy)
            .unwrap_or_else(|| panic!("{} did not become healthy", self.db()));
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = self.compose(&["down", "-v", "--remove-orphans"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A writer that makes WAL churn: rows, `pg_switch_wal()` and `CHECKPOINT` in a loop, in a
/// database of its own (so the fixture's databases stay as fingerprinted). Stopped on drop.
struct Churn(Child);

impl Churn {
    fn start(container: &str) -> Churn {
        psql(container, "postgres", "postgres", "CREATE DATABASE churn");
        psql(
            container,
            "postgres",
            "churn",
            "CREATE TABLE t (x bigint, pad text)",
        );
        let script = "while :; do psql -X -q -U postgres -d churn -c \"INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g\" -c 'SELECT pg_switch_wal()' -c CHECKPOINT >/dev/null || exit 1; done";
        Churn(
            Command::new("docker")
                .args(["exec", container, "sh", "-c", script])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }
}

impl Drop for Churn {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn physical_backups_under_wal_churn_restore_exactly_by_pgctl_and_by_hand() {
    let s = stack!();
    let sc = Scratch::new(&s);
    let target = format!("{}/db", sc.project);
    wait_until(Duration::from_secs(20), || s.target(&target))
        .expect("the scratch db is discovered");
    let before = fingerprint(&sc.db(), "postgres");
    let churn = Churn::start(&sc.db());
    std::thread::sleep(Duration::from_secs(2));
    // Three base backups while checkpoints remove WAL: every one must succeed.
    for n in 1..=3 {
        let o = s.pgctl(&["backup", "--physical", "--wait", &target]);
        assert!(
            o.status.success(),
            "physical backup {n} under WAL churn failed: {}{}",
            stdout(&o),
            stderr(&o)
        );
    }
    let switched = psql(&sc.db(), "postgres", "churn", "SELECT count(*) > 3 FROM t");
    drop(churn);
    assert_eq!(switched, "t", "the writer did not run");
    // No replication slot is left behind.
    assert_eq!(
        psql(
            &sc.db(),
            "postgres",
            "postgres",
            "SELECT count(*) FROM pg_replication_slots"
        ),
        "0"
    );

    // pgctl: into a new volume, the compose file rewritten.
    let o = s.pgctl(&["restore", "latest", "--physical", "--to", &target]);
    assert!(
        o.status.success(),
        "physical restore failed: {}{}",
        stdout(&o),
        stderr(&o)
    );
    sc.wait_healthy();
    assert_restored(
        &before,
        &fingerprint(&sc.db(), "postgres"),
        &ALL,
        "pgctl restore --physical",
    );

    // By hand, the README's recipe as written (the example folder and volume name replaced).
    let blocks = readme_physical_block();
    let m = s
        .list(&target)
        .into_iter()
        .find(|m| m["kind"] == "physical")
        .unwrap();
    let folder = format!("s3://pgbackup/{}", m["prefix"].as_str().unwrap());
    let volume = format!("{}-by-hand", sc.project);
    let script = blocks
        .replace(
            "s3://pgbackup/pgbackup/db/20261121T030000.412Z-4f2a9c-physical",
            &folder,
        )
        .replace("db-restored", &volume);
    let o = aws_sh(&s, &sc.dir, &script);
    let _vol = VolumeCleanup(volume.clone());
    assert!(
        o.status.success(),
        "README physical recipe failed:\n{script}\n{}{}",
        stdout(&o),
        stderr(&o)
    );
    // "point the service's data volume at db-restored in compose.yaml (external), then up -d".
    let file = sc.dir.join("compose.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    let key = text
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("- ")
                .and_then(|v| v.strip_suffix(":/var/lib/postgresql/data"))
        })
        .expect("the data volume line")
        .to_string();
    let text = text.replace(
        &format!("- {key}:/var/lib/postgresql/data"),
        "- byhand:/var/lib/postgresql/data",
    ) + &format!("  byhand:\n    external: true\n    name: {volume}\n");
    std::fs::write(&file, text).unwrap();
    let o = sc.compose(&["up", "-d", "db"]);
    assert!(o.status.success(), "compose up: {}", stderr(&o));
    sc.wait_healthy();
    let mounted = docker(&[
        "inspect",
        "-f",
        "{{range .Mounts}}{{.Name}} {{end}}",
        &sc.db(),
    ]);
    assert!(mounted.contains(&volume), "{mounted}");
    assert_restored(
        &before,
        &fingerprint(&sc.db(), "postgres"),
        &ALL,
        "README by-hand physical recipe",
    );
}

struct VolumeCleanup(String);

impl Drop for VolumeCleanup {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["volume", "rm", "-f", &self.0])
            .output();
    }
}

/// The by-hand physical restore block of the README.
fn readme_physical_block() -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let at = readme
        .find("By hand, with standard tools only")
        .expect("the by-hand section");
    let rest = &readme[at..];
    let a = rest.find("```sh\n").unwrap() + 6;
    let b = rest[a..].find("```").unwrap();
    rest[a..a + b].to_string()
}
