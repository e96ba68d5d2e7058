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

/// A compose project with a Postgres 17 service `db` (named volume `data`) and the README's
/// sidecar; up and healthy.
fn project(s: &common::Stack, prefix: &str) -> common::Project {
    let readme = common::readme_blocks("Backups on a local directory", "yaml");
    let service = readme[0].replace(
        "image: pgbackup:local",
        &format!("image: {}", s.sidecar_image()),
    );
    let p = common::Project::new(
        prefix,
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
            image = common::postgres_image(),
            mount = common::data_mount(17),
        ),
    );
    std::fs::create_dir_all(p.dir.join("backups")).unwrap();
    let o = p.compose(&["up", "-d", "--wait"]);
    assert!(o.status.success(), "{}", stderr(&o));
    p
}

/// `sh -c script` in a throwaway container of the Postgres image with `volume` at the data
/// mount, as `user`.
fn on_volume(volume: &str, user: &str, script: &str) -> String {
    docker(&[
        "run",
        "--rm",
        "-u",
        user,
        "-v",
        &format!("{volume}:{}", common::data_mount(17)),
        &common::postgres_image(),
        "sh",
        "-c",
        script,
    ])
}

/// Waits until `container` has stopped by itself.
fn stopped(container: &str) {
    let down = wait_until(Duration::from_secs(60), || {
        (docker(&["inspect", "-f", "{{.State.Running}}", container]) == "false").then_some(())
    });
    assert!(down.is_some(), "{container} cannot start");
}

const PGDATA: &str = "/var/lib/postgresql/data";

#[test]
fn a_service_that_cannot_start_is_rescued_by_resetting_its_wal_and_a_healthy_one_is_refused() {
    let s = stack!();
    let image = common::postgres_image();
    let p = project(&s, "rescue");
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
    let redo = on_volume(
        &volume,
        "postgres",
        &format!(
            "PATH=$PATH:$(ls -d /usr/lib/postgresql/*/bin | tr '\\n' ':'); pg_controldata -D {PGDATA} | sed -n 's/^Latest checkpoint.s REDO WAL file: *//p'"
        ),
    );
    assert_eq!(redo.len(), 24, "the checkpoint's segment: {redo:?}");
    on_volume(&volume, "root", &format!("rm {PGDATA}/pg_wal/{redo}"));
    docker(&["start", &db]);
    stopped(&db);
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

#[test]
fn a_rescue_that_does_not_bring_the_server_back_puts_the_volume_back_as_it_was() {
    let s = stack!();
    let p = project(&s, "rescueback");
    let db = p.container("db");
    let volume = format!("{}_data", p.project);
    psql(&db, "app", "app", "CREATE TABLE t AS SELECT 1 AS id");
    // The wrong diagnosis: the server does not start because of its configuration, which no
    // WAL reset mends.
    docker(&["stop", &db]);
    on_volume(
        &volume,
        "postgres",
        &format!("echo 'shared_buffers = lots' >> {PGDATA}/postgresql.auto.conf"),
    );
    docker(&["start", &db]);
    stopped(&db);
    let control = format!("md5sum {PGDATA}/global/pg_control | cut -c1-32");
    let before = on_volume(&volume, "root", &control);

    let o = p.pgctl(&["rescue", "db", "--reset-wal", "--yes"]);
    let err = stderr(&o);
    let copies = volumes_like(&format!("{volume}-before-resetwal-"));
    let _copy = copies.first().map(|c| Volume(c.clone()));
    assert_eq!(o.status.code(), Some(1), "{}{err}", stdout(&o));
    assert!(
        err.contains("still cannot start after pg_resetwal"),
        "{err}"
    );
    assert!(
        err.contains("shared_buffers"),
        "the server's own words: {err}"
    );
    assert!(
        err.contains(&format!(
            "holds what it held before the rescue again (from {}",
            copies[0]
        )),
        "{err}"
    );
    // pg_resetwal rewrote pg_control; the put-back volume has the one from before again.
    assert_eq!(on_volume(&volume, "root", &control), before);
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.Running}}", &db]),
        "false",
        "left stopped"
    );
    // Mended by hand, it starts with its data.
    on_volume(
        &volume,
        "postgres",
        &format!("sed -i '/shared_buffers = lots/d' {PGDATA}/postgresql.auto.conf"),
    );
    docker(&["start", &db]);
    common::wait_ready(&db);
    assert_eq!(psql(&db, "app", "app", "SELECT id FROM t"), "1");
}
