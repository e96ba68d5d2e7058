//! End-to-end: `pgctl rescue SERVICE --reset-wal --yes` on a compose service made unbootable by
//! removing the WAL segment of its last checkpoint (after a crash): a healthy server is refused
//! and nothing changes; the rescue copies the volume first (kept, named), resets the WAL from the
//! service's own image, starts it, and the rows checkpointed before the lost segment are there.

mod common;

use std::time::Duration;

use common::{docker, psql, stderr, stdout, wait_until};

fn volumes_like(fragment: &str) -> Vec<String> {
    docker(&["volume", "ls", "-q"])
        .lines()
        .filter(|v| v.contains(fragment))
        .map(String::from)
        .collect()
}

/// A volume removed when dropped (the rescue's copy is not the project's).
struct Volume(String);

impl Drop for Volume {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["volume", "rm", "-f", &self.0])
            .output();
    }
}

#[test]
fn a_service_that_cannot_start_is_rescued_by_resetting_its_wal_and_a_healthy_one_is_refused() {
    let s = stack!();
    let readme = common::readme_blocks("Backups on a local directory", "yaml");
    let service = readme[0].replace(
        "image: pgbackup:local",
        &format!("image: {}", s.sidecar_image()),
    );
    let image = common::postgres_image();
    let p = common::Project::new(
        "rescue",
        &format!(
            r#"services:
  db:
    image: {image}
    environment:
      POSTGRES_USER: app
      POSTGRES_PASSWORD: rescue
      POSTGRES_DB: app
    volumes:
      - data:{mount}
    healthcheck:
      test: ["CMD-SHELL", "pg_isready -q -h 127.0.0.1"]
      interval: 2s
      retries: 60
{service}
volumes:
  data:
"#,
            mount = common::data_mount(17),
        ),
    );
    std::fs::create_dir_all(p.dir.join("backups")).unwrap();
    let o = p.compose(&["up", "-d", "--wait"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let db = p.container("db");
    let volume = format!("{}_data", p.project);

    // Rows that a checkpoint writes to the data files, then the checkpoint in a segment of its
    // own, then rows whose WAL will be lost.
    psql(
        &db,
        "app",
        "app",
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'kept ' || g FROM generate_series(1, 1000) g",
    );
    psql(&db, "app", "app", "SELECT pg_switch_wal()");
    psql(&db, "app", "app", "CHECKPOINT");
    psql(
        &db,
        "app",
        "app",
        "INSERT INTO t SELECT g, 'after the checkpoint' FROM generate_series(1001, 1100) g",
    );

    // Healthy: refused, nothing changed.
    let refused = p.pgctl(&["rescue", "db", "--reset-wal", "--yes"]);
    assert_eq!(refused.status.code(), Some(4), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("running and answers queries")
            && stderr(&refused).contains("nothing was changed"),
        "{}",
        stderr(&refused)
    );
    assert!(volumes_like(&format!("{volume}-before-resetwal")).is_empty());
    // Without --yes: what it does and the first choice, exit 2.
    let unconfirmed = p.pgctl(&["rescue", "db", "--reset-wal"]);
    assert_eq!(unconfirmed.status.code(), Some(2));
    assert!(
        stderr(&unconfirmed).contains("restoring a backup is the first choice"),
        "{}",
        stderr(&unconfirmed)
    );

    // A crash, then the segment holding the last checkpoint is gone: the server cannot start.
    docker(&["kill", &db]);
    let pgdata = "/var/lib/postgresql/data";
    let redo = docker(&[
        "run",
        "--rm",
        "-u",
        "postgres",
        "-v",
        &format!("{volume}:{}", common::data_mount(17)),
        &image,
        "sh",
        "-c",
        &format!(
            "PATH=$PATH:$(ls -d /usr/lib/postgresql/*/bin | tr '\\n' ':'); pg_controldata -D {pgdata} | sed -n 's/^Latest checkpoint.s REDO WAL file: *//p'"
        ),
    ]);
    assert_eq!(redo.len(), 24, "the checkpoint's segment: {redo:?}");
    docker(&[
        "run",
        "--rm",
        "-v",
        &format!("{volume}:{}", common::data_mount(17)),
        &image,
        "rm",
        &format!("{pgdata}/pg_wal/{redo}"),
    ]);
    docker(&["start", &db]);
    let down = wait_until(Duration::from_secs(60), || {
        (docker(&["inspect", "-f", "{{.State.Running}}", &db]) == "false").then_some(())
    });
    assert!(down.is_some(), "the server cannot start");
    let logs =
        common::run(std::process::Command::new("docker").args(["logs", "--tail", "20", &db]));
    let said = format!("{}{}", stdout(&logs), stderr(&logs));
    assert!(said.contains("checkpoint record"), "{said}");

    // The rescue.
    let rescued = p.pgctl(&["rescue", "db", "--reset-wal", "--yes"]);
    let (out, err) = (stdout(&rescued), stderr(&rescued));
    let copies = volumes_like(&format!("{volume}-before-resetwal-"));
    let _copy = copies.first().map(|c| Volume(c.clone()));
    assert!(rescued.status.success(), "{out}{err}");
    assert_eq!(copies.len(), 1, "one copy: {copies:?}");
    assert!(out.contains(&copies[0]), "the copy is named: {out}");
    assert!(err.contains("pg_resetwal --dry-run says:"), "{err}");
    assert!(out.contains("the server answers: PostgreSQL"), "{out}");
    // The copy holds the data directory as it was (the lost segment missing, the rest there).
    let copied = docker(&[
        "run",
        "--rm",
        "-v",
        &format!("{}:/copy:ro", copies[0]),
        &image,
        "sh",
        "-c",
        "test -f /copy/PG_VERSION && ls /copy/pg_wal | wc -l",
    ]);
    assert!(copied.parse::<u32>().unwrap() >= 1, "{copied}");

    // The server is up; what the checkpoint wrote is there.
    common::wait_ready(&db);
    let kept = psql(&db, "app", "app", "SELECT count(*) FROM t WHERE id <= 1000");
    assert_eq!(kept, "1000");
    let sum = psql(&db, "app", "app", "SELECT sum(id) FROM t WHERE id <= 1000");
    assert_eq!(sum, "500500");
    // And it takes writes again.
    psql(
        &db,
        "app",
        "app",
        "INSERT INTO t VALUES (5000, 'after the rescue')",
    );
}
