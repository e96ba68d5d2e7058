//! End-to-end: logical backups on the real stack. Data written to targets is backed up by the
//! schedule and by `pgctl backup`, for `exec` (Postgres 17) and `connect` (Postgres 15 dumped by
//! the sidecar's 18 client); the stored objects pass `sha256sum -c` and restore with standard
//! tools alone; failures leave nothing listed and no open multipart upload.

mod common;

use std::time::Duration;

use common::{Cleanup, docker, psql, sh, stderr, stdout, unique, wait_until};
use serde_json::Value;

/// Restores one downloaded backup with standard tools only into a fresh database of db-restore,
/// then compares `table` with the source.
fn check_restorable(
    s: &common::Stack,
    backup: &Value,
    source: &str,
    user: &str,
    db: &str,
    table: &str,
) {
    let cfg = common::s3_config(s);
    let dir = tempfile::tempdir().unwrap();
    let names = common::download(&cfg, backup["prefix"].as_str().unwrap(), dir.path());
    assert!(
        names.contains(&"manifest.json".to_string()) && names.contains(&"SHA256SUMS".to_string()),
        "{names:?}"
    );
    let d = dir.path().display();
    sh(&format!("cd {d} && sha256sum -c --strict SHA256SUMS"));

    let restore = s.container("db-restore");
    let scratch = unique("scratch").replace('-', "_");
    psql(
        &restore,
        "app",
        "app",
        &format!("CREATE DATABASE {scratch}"),
    );
    // Roles first, from the globals dump (the role that owns objects must exist).
    sh(&format!(
        "zstd -dc {d}/globals.sql.zst | grep -v -E '^(CREATE|ALTER) ROLE (app|postgres)( |;)' | docker exec -i {restore} psql -X -q -U app -d postgres >/dev/null"
    ));
    sh(&format!(
        "zstd -dc {d}/{db}.dump.zst | docker exec -i {restore} pg_restore --no-owner -U app -d {scratch} --exit-on-error"
    ));
    let q = format!("COPY (SELECT * FROM {table} ORDER BY 1) TO STDOUT");
    let want = psql(source, user, db, &q);
    let got = psql(&restore, "app", &scratch, &q);
    assert!(!want.is_empty());
    assert_eq!(got, want, "restored table contents differ");
    psql(&restore, "app", "app", &format!("DROP DATABASE {scratch}"));
}

#[test]
fn manual_backup_exec_pg17_restores_with_standard_tools() {
    let s = stack!();
    let db = s.container("db");
    psql(
        &db,
        "app",
        "app",
        "DROP TABLE IF EXISTS orders; CREATE TABLE orders(id int PRIMARY KEY, note text, at timestamptz)",
    );
    psql(
        &db,
        "app",
        "app",
        "INSERT INTO orders SELECT g, 'order ' || g || repeat(' x', g % 7), now() - g * interval '1 minute' FROM generate_series(1, 5000) g",
    );
    psql(
        &db,
        "app",
        "postgres",
        "DO $$ BEGIN CREATE ROLE reporting_e2e LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$",
    );

    let target = format!("{}/db", s.project);
    let o = s.pgctl(&["backup", "--wait", &target]);
    assert!(
        o.status.success(),
        "pgctl backup failed: {}{}",
        stdout(&o),
        stderr(&o)
    );
    assert!(stdout(&o).starts_with("ok "), "{}", stdout(&o));

    let list = s.list(&target);
    let last = list.last().expect("the backup is listed").clone();
    assert_eq!(last["method"], "exec");
    assert_eq!(last["postgres"]["major"], 17);
    assert!(
        last["databases"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d == "app")
    );
    check_restorable(&s, &last, &db, "app", "app", "orders");

    // Roles come back from the globals dump.
    let restore = s.container("db-restore");
    assert_eq!(
        psql(
            &restore,
            "app",
            "postgres",
            "SELECT count(*) FROM pg_roles WHERE rolname = 'reporting_e2e'"
        ),
        "1"
    );

    let table = stdout(&s.pgctl(&["list", &target]));
    assert!(
        table.contains(last["backup_id"].as_str().unwrap()),
        "{table}"
    );
    // Prometheus metrics name the target and database.
    let metrics = docker(&[
        "exec",
        &s.container("backup"),
        "curl",
        "-fsS",
        "http://127.0.0.1:8080/metrics",
    ]);
    for needle in [
        format!("pgbackup_last_success_timestamp_seconds{{target=\"{target}\",kind=\"logical\"}}"),
        format!("pgbackup_database_last_size_bytes{{target=\"{target}\",database=\"app\"}}"),
        "pgbackup_backups_succeeded_total".to_string(),
    ] {
        assert!(
            metrics.contains(&needle),
            "{needle} missing from /metrics:\n{metrics}"
        );
    }
}

#[test]
fn manual_backup_connect_pg15_restores_with_standard_tools() {
    let s = stack!();
    let db15 = s.container("db15");
    psql(
        &db15,
        "legacy",
        "legacy",
        "DROP TABLE IF EXISTS items; CREATE TABLE items(id int PRIMARY KEY, payload jsonb)",
    );
    psql(
        &db15,
        "legacy",
        "legacy",
        "INSERT INTO items SELECT g, jsonb_build_object('n', g, 's', md5(g::text)) FROM generate_series(1, 3000) g",
    );
    let target = format!("{}/db15", s.project);
    let o = s.pgctl(&["backup", "--wait", "--json", &target]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["outcomes"][0]["ok"], true, "{r}");

    let last = s.list(&target).last().cloned().expect("listed");
    assert_eq!(last["method"], "connect");
    assert_eq!(last["postgres"]["major"], 15);
    assert!(
        last["postgres"]["dump_tool"]
            .as_str()
            .unwrap()
            .contains(" 18."),
        "the sidecar's newer client dumped it: {last}"
    );
    check_restorable(&s, &last, &db15, "legacy", "legacy", "items");
}

/// A container backed up by a seconds-level schedule with `method`; checks the first scheduled
/// backup that started after data was written.
fn scheduled_backup(s: &common::Stack, method: &str) {
    let name = unique(&format!("sched-{method}"));
    let _g = Cleanup(name.clone());
    s.start_pg(
        &name,
        &[
            ("pgbackup.enable", "true"),
            ("pgbackup.schedule", "*/5 * * * * *"),
            ("pgbackup.method", method),
            ("pgbackup.globals", "false"),
        ],
    );
    psql(
        &name,
        "postgres",
        "postgres",
        "CREATE TABLE ticks(id int PRIMARY KEY); INSERT INTO ticks SELECT generate_series(1, 100)",
    );
    let written = chrono::Utc::now();
    let found = wait_until(Duration::from_secs(40), || {
        s.list(&name).into_iter().find(|b| {
            b["started_at"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .is_some_and(|t| t > written)
        })
    });
    let b = found.expect("the schedule produced a committed backup within 40 s");
    assert_eq!(b["target"], name.as_str());
    assert_eq!(b["method"], method);
    let st = s.target(&name).expect("listed");
    assert!(st["run"]["last_success"]["trigger"] == "schedule", "{st}");
    check_restorable_plain_count(s, &b);
}

#[test]
fn seconds_level_schedule_backs_up_by_itself_exec() {
    let s = stack!();
    scheduled_backup(&s, "exec");
}

#[test]
fn seconds_level_schedule_backs_up_by_itself_connect() {
    let s = stack!();
    scheduled_backup(&s, "connect");
}

/// A lighter restore check: the dump lists the table (pg_restore --list, standard tool).
fn check_restorable_plain_count(s: &common::Stack, b: &Value) {
    let cfg = common::s3_config(s);
    let dir = tempfile::tempdir().unwrap();
    common::download(&cfg, b["prefix"].as_str().unwrap(), dir.path());
    let d = dir.path().display();
    sh(&format!("cd {d} && sha256sum -c --strict SHA256SUMS"));
    let restore = s.container("db-restore");
    let toc = sh(&format!(
        "zstd -dc {d}/postgres.dump.zst | docker exec -i {restore} pg_restore --list"
    ));
    assert!(toc.contains("TABLE public ticks"), "{toc}");
}

#[test]
fn failures_leave_nothing_listed_and_say_why() {
    let s = stack!();
    let cfg = common::s3_config(&s);

    // A database that does not exist (dropped after it was configured/listed).
    let ghost = unique("ghost");
    let _g1 = Cleanup(ghost.clone());
    s.start_pg(
        &ghost,
        &[
            ("pgbackup.enable", "true"),
            ("pgbackup.databases", "postgres,gone_db"),
        ],
    );
    wait_until(Duration::from_secs(5), || s.target(&ghost)).expect("listed");
    let o = s.pgctl(&["backup", &ghost]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("gone_db") && stdout(&o).contains("does not exist"),
        "pg_dump's stderr is reported: {}",
        stdout(&o)
    );
    assert!(s.list(&ghost).is_empty(), "a failed backup is never listed");

    // connect mode with a wrong password.
    let pw = unique("wrongpw");
    let _g2 = Cleanup(pw.clone());
    s.start_pg(
        &pw,
        &[("pgbackup.enable", "true"), ("pgbackup.method", "connect")],
    );
    psql(
        &pw,
        "postgres",
        "postgres",
        "ALTER ROLE postgres PASSWORD 'changed-after-start'",
    );
    wait_until(Duration::from_secs(5), || s.target(&pw)).expect("listed");
    let o = s.pgctl(&["backup", &pw]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("password authentication failed"),
        "{}",
        stdout(&o)
    );
    assert!(s.list(&pw).is_empty());

    // The controller keeps serving the others.
    let o = s.pgctl(&["backup", "--wait", &format!("{}/db", s.project)]);
    assert!(o.status.success(), "{}", stdout(&o));
    let m = common::wait_until(Duration::from_secs(10), || {
        common::open_uploads(&cfg).is_empty().then_some(())
    });
    assert!(
        m.is_some(),
        "no multipart upload left open: {:?}",
        common::open_uploads(&cfg)
    );
}

#[test]
fn target_stopped_mid_dump_fails_cleanly() {
    let s = stack!();
    let cfg = common::s3_config(&s);
    let name = unique("stopmid");
    let _g = Cleanup(name.clone());
    s.start_pg(
        &name,
        &[
            ("pgbackup.enable", "true"),
            ("pgbackup.compression", "none"),
        ],
    );
    // ~400 MB of incompressible-ish rows so the dump is still running when we stop it.
    psql(&name, "postgres", "postgres", common::BIG_TABLE);
    wait_until(Duration::from_secs(5), || s.target(&name)).expect("listed");

    let backup = {
        let c = s.container("backup");
        let name = name.clone();
        std::thread::spawn(move || {
            common::run(
                std::process::Command::new("docker").args(["exec", &c, "pgctl", "backup", &name]),
            )
        })
    };
    let running = wait_until(Duration::from_secs(20), || {
        s.target(&name).filter(|t| t["run"]["running"].is_object())
    });
    assert!(running.is_some(), "the backup started");
    // A second manual backup of the same target is refused while one runs.
    let o = s.pgctl(&["backup", &name]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("refused") && stdout(&o).contains("already running"),
        "{}",
        stdout(&o)
    );
    std::thread::sleep(Duration::from_millis(1000));
    docker(&["stop", "-t", "2", &name]);
    let o = backup.join().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    assert!(
        s.list(&name).is_empty(),
        "nothing listed after a failed dump"
    );
    let clean = wait_until(Duration::from_secs(20), || {
        common::open_uploads(&cfg).is_empty().then_some(())
    });
    assert!(
        clean.is_some(),
        "the multipart upload was aborted: {:?}",
        common::open_uploads(&cfg)
    );
}

#[test]
fn job_timeout_aborts_and_lists_nothing() {
    let s = stack!();
    let name = unique("timeout");
    let _g = Cleanup(name.clone());
    s.start_pg(
        &name,
        &[
            ("pgbackup.enable", "true"),
            ("pgbackup.timeout", "3s"),
            ("pgbackup.globals", "false"),
        ],
    );
    psql(&name, "postgres", "postgres", "CREATE TABLE locked(id int)");
    // Hold an exclusive lock so pg_dump waits on it for longer than the job may run.
    let holder =
        {
            let n = name.clone();
            std::thread::spawn(move || {
                common::run(std::process::Command::new("docker").args([
                "exec", &n, "psql", "-U", "postgres", "-c",
                "BEGIN; LOCK TABLE locked IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(20); COMMIT;",
            ]))
            })
        };
    std::thread::sleep(Duration::from_secs(1));
    wait_until(Duration::from_secs(5), || s.target(&name)).expect("listed");
    let started = std::time::Instant::now();
    let o = s.pgctl(&["backup", &name]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stdout(&o).contains("timeout of 3s"), "{}", stdout(&o));
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the job was cut at its timeout"
    );
    assert!(s.list(&name).is_empty());
    let _ = holder.join();
}
