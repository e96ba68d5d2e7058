//! End-to-end: databases outside Docker and runs that do not pile up.
//!
//! - A Postgres reachable only by URL (no labels, another compose project, TLS only, a test CA)
//!   declared with the README's "Databases outside Docker" block as written: backed up on its
//!   schedule over `sslmode=verify-full`, listed, shown in status as declared by URL, restored
//!   by URL (all or nothing, `--clean`) to exactly what it held; a wrong CA fails naming the
//!   certificate; plaintext is refused by the server (so the backup was TLS); the password never
//!   reaches logs, status, manifests or any process's arguments.
//! - `PGBACKUP_SKIP_IF_NEWER_THAN` with run-on-startup: a sidecar started three times makes one
//!   backup, `--all` skips and says so, a named target always runs.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::fixture::{self, FIXTURE};
use common::{Processes, docker, psql, stderr, stdout, wait_until};
use serde_json::Value;

const PASSWORD: &str = "outside-Secret-pw-7f3a";
const HOST: &str = "billing-db.test";

fn ok(o: &std::process::Output) -> String {
    assert!(o.status.success(), "{}{}", stdout(o), stderr(o));
    stdout(o)
}

/// A test CA, a server certificate it signs for [`HOST`], and another CA that signs nothing.
fn certificates(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let script = format!(
        "set -e
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj '/CN=pgbackup test CA' 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj '/CN={HOST}' 2>/dev/null
printf 'subjectAltName=DNS:{HOST}\\n' > san.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 2 -extfile san.ext 2>/dev/null
openssl req -x509 -newkey rsa:2048 -nodes -keyout other.key -out wrong-ca.crt -days 2 -subj '/CN=another CA' 2>/dev/null
chmod 644 *.crt"
    );
    let o = common::run(Command::new("sh").args(["-c", &script]).current_dir(dir));
    assert!(o.status.success(), "openssl: {}", stderr(&o));
}

/// Turns TLS on in `container` with `certs`' server certificate, and lets clients in over TLS
/// only (plaintext TCP is rejected by pg_hba).
fn tls_only(container: &str, certs: &Path) {
    let pgdata = docker(&["exec", container, "sh", "-c", "echo $PGDATA"]);
    for f in ["server.crt", "server.key"] {
        docker(&[
            "cp",
            &certs.join(f).display().to_string(),
            &format!("{container}:{pgdata}/{f}"),
        ]);
    }
    docker(&[
        "exec",
        "-u",
        "root",
        container,
        "sh",
        "-c",
        &format!(
            "chown postgres:postgres {pgdata}/server.* && chmod 600 {pgdata}/server.key && printf 'local all all trust\\nhostssl all all all scram-sha-256\\nhost all all all reject\\n' > {pgdata}/pg_hba.conf"
        ),
    ]);
    psql(
        container,
        "postgres",
        "postgres",
        "ALTER SYSTEM SET ssl_cert_file = 'server.crt'",
    );
    psql(
        container,
        "postgres",
        "postgres",
        "ALTER SYSTEM SET ssl_key_file = 'server.key'",
    );
    psql(
        container,
        "postgres",
        "postgres",
        "ALTER SYSTEM SET ssl = on",
    );
    psql(container, "postgres", "postgres", "SELECT pg_reload_conf()");
    let on = wait_until(Duration::from_secs(20), || {
        (psql(container, "postgres", "postgres", "SHOW ssl") == "on").then_some(())
    });
    assert!(on.is_some(), "TLS is on in {container}");
}

/// `docker compose exec -T [-e NAME…] backup pgctl ARGS` in `p`, with `env` in the environment
/// of the docker CLI (so values never appear in its arguments).
fn pgctl_env(p: &common::Project, env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new("docker");
    cmd.args(["compose", "-p", &p.project, "exec", "-T"]);
    for (k, v) in env {
        cmd.args(["-e", k]).env(k, v);
    }
    cmd.args(["backup", "pgctl"]).args(args).current_dir(&p.dir);
    common::run(&mut cmd)
}

#[test]
fn a_database_outside_docker_is_backed_up_over_verified_tls_on_schedule_listed_and_restored_by_url()
{
    let s = stack!();
    let readme = common::readme_blocks("Databases outside Docker", "yaml");
    let block = &readme[0];
    for line in [
        "PGBACKUP_TARGET_BILLING_URL_FILE: /run/secrets/billing_url",
        "billing_url: {file: ./secrets/billing_url}",
        "- ./certs:/certs:ro",
    ] {
        assert!(block.contains(line), "README block has {line}: {block}");
    }

    // "Another machine": its own compose project, no pgbackup label, reachable by its name on
    // a network the sidecar joins, TLS only.
    let outside = common::Project::new(
        "outside",
        &format!(
            r#"services:
  pg:
    image: {pg}
    environment:
      POSTGRES_PASSWORD: {PASSWORD}
    volumes:
      - {FIXTURE}:/docker-entrypoint-initdb.d:ro
    networks:
      net:
        aliases: [{HOST}]
    healthcheck:
      test: ["CMD-SHELL", "pg_isready -q -h 127.0.0.1"]
      interval: 2s
      retries: 300
networks:
  net: {{}}
"#,
            pg = common::postgres_image(),
        ),
    );
    ok(&outside.compose(&["up", "-d", "--wait"]));
    let pg = outside.container("pg");
    let certs_dir = std::env::temp_dir().join(common::unique("outside-certs"));
    certificates(&certs_dir);
    tls_only(&pg, &certs_dir);
    let before = fixture::fingerprint(&pg, "postgres");

    // The sidecar: the README's block as written, with the schedule every 15 s, a second
    // target whose CA is wrong, and a local destination (no bucket needed here).
    let service = block
        .replace(
            "image: pgbackup:local",
            &format!("image: {}", s.sidecar_image()),
        )
        .replace("\"0 3 * * *\"", "\"*/15 * * * * *\"")
        .replace(
            "      PGBACKUP_TARGET_BILLING_KEEP_DAILY: \"7\"",
            "      PGBACKUP_TARGET_BILLING_KEEP_DAILY: \"7\"
      PGBACKUP_TARGET_WRONGCA_URL_FILE: /run/secrets/wrongca_url
      PGBACKUP_TARGET_WRONGCA_SCHEDULE: \"off\"
      PGBACKUP_DESTINATION: /backups",
        )
        .replace(
            "secrets: [billing_url]",
            "secrets: [billing_url, wrongca_url]",
        )
        .replace(
            "      - ./certs:/certs:ro",
            "      - ./certs:/certs:ro
      - ./backups:/backups
    networks: [default, outside]",
        )
        .replace(
            "  billing_url: {file: ./secrets/billing_url}",
            "  billing_url: {file: ./secrets/billing_url}
  wrongca_url: {file: ./secrets/wrongca_url}",
        );
    let p = common::Project::new(
        "declared",
        &format!(
            "services:\n{service}\nnetworks:\n  outside:\n    external: true\n    name: {}_net\n",
            outside.project
        ),
    );
    std::fs::create_dir_all(p.dir.join("secrets")).unwrap();
    std::fs::create_dir_all(p.dir.join("backups")).unwrap();
    std::fs::create_dir_all(p.dir.join("certs")).unwrap();
    for f in ["ca.crt", "wrong-ca.crt"] {
        std::fs::copy(certs_dir.join(f), p.dir.join("certs").join(f)).unwrap();
    }
    let url = |ca: &str| {
        format!(
            "postgres://postgres:{PASSWORD}@{HOST}:5432/?sslmode=verify-full&sslrootcert=/certs/{ca}\n"
        )
    };
    std::fs::write(p.dir.join("secrets/billing_url"), url("ca.crt")).unwrap();
    std::fs::write(p.dir.join("secrets/wrongca_url"), url("wrong-ca.crt")).unwrap();
    ok(&p.compose(&["up", "-d", "--wait"]));

    // Listed beside the labelled targets, marked as declared by URL, password nowhere.
    let status: Value = serde_json::from_str(&ok(&p.pgctl(&["status", "--json"]))).unwrap();
    let billing = status["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["target"] == "billing")
        .unwrap_or_else(|| panic!("billing in status: {status}"))
        .clone();
    assert_eq!(billing["state"], "valid", "{billing}");
    assert_eq!(
        billing["url"],
        format!("postgres://postgres@{HOST}:5432/?sslmode=verify-full&sslrootcert=/certs/ca.crt"),
        "{billing}"
    );
    assert_eq!(billing["settings"]["method"], "connect", "{billing}");
    let table = ok(&p.pgctl(&["status"]));
    assert!(
        table.contains(&format!("url postgres://postgres@{HOST}:5432/")),
        "{table}"
    );

    // Backed up on its schedule, over TLS with the CA verified.
    let listed = wait_until(Duration::from_secs(120), || {
        let v: Vec<Value> =
            serde_json::from_str(&stdout(&p.pgctl(&["list", "billing", "--json"]))).ok()?;
        v.into_iter().next()
    })
    .unwrap_or_else(|| {
        panic!(
            "a scheduled backup of billing: {}",
            stdout(&p.compose(&["logs", "backup"]))
        )
    });
    assert_eq!(listed["target"], "billing", "{listed}");
    assert_eq!(listed["method"], "connect", "{listed}");
    assert_eq!(
        listed["container"],
        format!("postgres://postgres@{HOST}:5432/?sslmode=verify-full&sslrootcert=/certs/ca.crt"),
        "the manifest names the server without its password"
    );
    let dbs: Vec<&str> = listed["databases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert!(
        dbs.contains(&fixture::SHOP) && dbs.contains(&fixture::ODD),
        "{dbs:?}"
    );
    let text = ok(&p.pgctl(&["list", "billing"]));
    assert!(text.contains("billing"), "{text}");
    assert!(ok(&p.pgctl(&["verify", "latest", "--from", "billing"])).starts_with("ok"));

    // A wrong CA fails, naming the certificate problem; nothing is listed for it.
    let wrong = p.pgctl(&["backup", "wrongca"]);
    assert!(!wrong.status.success());
    let said = format!("{}{}", stdout(&wrong), stderr(&wrong));
    assert!(said.contains("certificate verify failed"), "{said}");
    assert!(said.contains("sslrootcert=/certs/wrong-ca.crt"), "{said}");
    assert!(!said.contains(PASSWORD), "{said}");

    // Plaintext is refused by the server: the backups above went over TLS.
    let plain = pgctl_env(
        &p,
        &[("PGPASSWORD", PASSWORD)],
        &[
            "restore",
            "latest",
            "--from",
            "billing",
            "--to-url",
            &format!("postgres://postgres@{HOST}/?sslmode=disable"),
            "--dry-run",
        ],
    );
    assert!(!plain.status.success());
    assert!(
        stderr(&plain).contains("no encryption"),
        "{}",
        stderr(&plain)
    );

    // A password in --to-url is refused before anything happens, and not echoed.
    let leaky = p.pgctl(&[
        "restore",
        "latest",
        "--from",
        "billing",
        "--to-url",
        &format!("postgres://postgres:{PASSWORD}@{HOST}/"),
    ]);
    assert_eq!(leaky.status.code(), Some(2), "{}", stderr(&leaky));
    assert!(stderr(&leaky).contains("PGPASSWORD"), "{}", stderr(&leaky));
    assert!(!stderr(&leaky).contains(PASSWORD));

    // Restored by URL: the server's data changes, the restore with --clean brings back exactly
    // what it held, every process's arguments sampled meanwhile.
    psql(
        &pg,
        "postgres",
        fixture::SHOP,
        "DELETE FROM app.orders WHERE id % 2 = 0",
    );
    assert_ne!(fixture::fingerprint(&pg, "postgres"), before);
    let watch = Processes::watch(vec![p.container("backup"), pg.clone()]);
    let restored = pgctl_env(
        &p,
        &[("PGPASSWORD", PASSWORD)],
        &[
            "restore",
            "latest",
            "--from",
            "billing",
            "--to-url",
            &format!("postgres://postgres@{HOST}/?sslmode=verify-full&sslrootcert=/certs/ca.crt"),
            "--clean",
        ],
    );
    let seen = watch.stop();
    assert!(
        restored.status.success(),
        "{}{}",
        stdout(&restored),
        stderr(&restored)
    );
    // The server kept its roles (they existed before): the restore leaves them as they were.
    fixture::assert_restored_over(
        &before,
        &before,
        &fixture::fingerprint(&pg, "postgres"),
        &fixture::ALL,
        "restored by URL with --clean",
    );
    assert!(
        seen.contains("pg_restore") || seen.contains("psql"),
        "the restore was sampled"
    );
    assert!(
        !seen.contains(PASSWORD),
        "a password in process arguments: {seen}"
    );

    // Into the declared target by its name: planned (dry run) like any target.
    let planned = p.pgctl(&[
        "restore",
        "latest",
        "--to",
        "billing",
        "--clean",
        "--dry-run",
    ]);
    assert!(planned.status.success(), "{}", stderr(&planned));
    assert!(
        stderr(&planned).contains(&format!("into billing (postgres://postgres@{HOST}:5432/")),
        "{}",
        stderr(&planned)
    );

    // The password is nowhere the sidecar writes.
    let logs = ok(&p.compose(&["logs", "backup"]));
    assert!(logs.contains("Target declared by URL"), "{logs}");
    let metrics = docker(&[
        "exec",
        &p.container("backup"),
        "curl",
        "-fsS",
        "http://127.0.0.1:8080/metrics",
    ]);
    assert!(metrics.contains("target=\"billing\""), "{metrics}");
    let status = ok(&p.pgctl(&["status", "--json"]));
    let manifests = ok(&p.pgctl(&["list", "--json"]));
    for (what, text) in [
        ("logs", &logs),
        ("metrics", &metrics),
        ("status", &status),
        ("manifests", &manifests),
    ] {
        assert!(!text.contains(PASSWORD), "the password in the {what}");
    }
    let _ = std::fs::remove_dir_all(&certs_dir);
}

#[test]
fn a_sidecar_started_three_times_with_run_on_startup_makes_one_backup() {
    let s = stack!();
    let readme = common::readme_blocks("Backups on a local directory", "yaml");
    let service = readme[0]
        .replace(
            "image: pgbackup:local",
            &format!("image: {}", s.sidecar_image()),
        )
        .replace(
            "      PGBACKUP_DESTINATION: /backups",
            "      PGBACKUP_DESTINATION: /backups
      PGBACKUP_RUN_ON_STARTUP: \"true\"
      PGBACKUP_SKIP_IF_NEWER_THAN: 20h",
        );
    let p = common::Project::new(
        "startup",
        &format!(
            r#"services:
  db:
    image: {pg}
    environment:
      POSTGRES_PASSWORD: startup
    labels:
      pgbackup.enable: "true"
      pgbackup.schedule: "off"
    healthcheck:
      test: ["CMD-SHELL", "pg_isready -q -h 127.0.0.1"]
      interval: 2s
      retries: 60
{service}"#,
            pg = common::postgres_image(),
        ),
    );
    std::fs::create_dir_all(p.dir.join("backups")).unwrap();
    ok(&p.compose(&["up", "-d", "--wait"]));
    let target = format!("{}/db", p.project);
    let count = || -> Option<usize> {
        let v: Vec<Value> =
            serde_json::from_str(&stdout(&p.pgctl(&["list", &target, "--json"]))).ok()?;
        Some(v.len())
    };
    let first = wait_until(Duration::from_secs(90), || count().filter(|n| *n == 1));
    assert!(
        first.is_some(),
        "the start-up backup: {}",
        stdout(&p.compose(&["logs", "backup"]))
    );
    // Two restarts within the hour: each start-up run finds the backup young and skips.
    for n in 1..=2 {
        ok(&p.compose(&["restart", "backup"]));
        let skipped = wait_until(Duration::from_secs(60), || {
            let logs = stdout(&p.compose(&["logs", "backup"]));
            (logs.matches("Backup skipped: its logical backup").count() >= n).then_some(logs)
        });
        assert!(
            skipped.is_some(),
            "start {} skipped: {}",
            n + 1,
            stdout(&p.compose(&["logs", "backup"]))
        );
    }
    assert_eq!(count(), Some(1), "three starts, one backup");
    let logs = stdout(&p.compose(&["logs", "backup"]));
    assert!(logs.contains("within skip_if_newer_than=20h"), "{logs}");

    // `--all` skips it too, and says so; a named target always runs.
    let all = ok(&p.pgctl(&["backup", "--all"]));
    assert!(
        all.contains(&format!("skipped {target}")) && all.contains("skip_if_newer_than=20h"),
        "{all}"
    );
    assert_eq!(count(), Some(1));
    let named = ok(&p.pgctl(&["backup", &target]));
    assert!(named.starts_with("ok"), "{named}");
    assert_eq!(count(), Some(2));
}
