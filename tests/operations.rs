//! End-to-end: operating pgbackup — notifications to a webhook (and one to a dead receiver),
//! dead-man pings, hooks inside the target with their timeout, single-shot runs and their exit
//! codes, and no secret from a URL in logs, status or metrics. The controller is `pgctl run` on
//! the host (the binary under test), scoped to a compose project of its own; the receiver is a
//! task of this test on 127.0.0.1.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::receiver::{self, Receiver};
use common::{psql, stderr, stdout, wait_until};

/// Secrets in the URLs: none may appear in a log, the status or the metrics.
const HOOK_TOKEN: &str = "hooktoken7c1f";
const HEADER_SECRET: &str = "hdrsecret55e2";
const DEAD_TOKEN: &str = "deadtoken0b9a";
const PING_GOOD: &str = "0f3c9a-ping-good";
const PING_BAD: &str = "81bd2e-ping-bad";

fn service(name: &str, labels: &[(&str, &str)]) -> String {
    let mut s = format!(
        r#"  {name}:
    image: {image}
    environment:
      POSTGRES_USER: app
      POSTGRES_PASSWORD: ops-password
      POSTGRES_DB: app
    healthcheck:
      test: ["CMD-SHELL", "pg_isready -q -h 127.0.0.1"]
      interval: 2s
      retries: 60
    labels:
      pgbackup.enable: "true"
"#,
        image = common::postgres_image()
    );
    for (k, v) in labels {
        s.push_str(&format!(
            "      {k}: {}\n",
            serde_json::to_string(v).unwrap()
        ));
    }
    s
}

struct Ops {
    project: common::Project,
    rx: Receiver,
    dead: u16,
}

impl Ops {
    fn start() -> Ops {
        let rx = Receiver::start();
        let dead = common::free_port();
        let compose = format!(
            "services:\n{}{}{}{}",
            service(
                "good",
                &[
                    ("pgbackup.ping_url", &rx.url(&format!("/ping/{PING_GOOD}"))),
                    (
                        "pgbackup.hook.pre_backup",
                        "sh -c 'echo \"$$PGBACKUP_HOOK $$PGBACKUP_TARGET $$PGBACKUP_KIND\" > /tmp/pre.txt'",
                    ),
                    (
                        "pgbackup.hook.post_backup",
                        "sh -c 'echo \"$$PGBACKUP_RESULT $$PGBACKUP_BACKUP_ID\" > /tmp/post.txt'",
                    ),
                ],
            ),
            service(
                "bad",
                &[
                    ("pgbackup.databases", "nosuchdb"),
                    ("pgbackup.ping_url", &rx.url(&format!("/ping/{PING_BAD}"))),
                ],
            ),
            service(
                "refusing",
                &[(
                    "pgbackup.hook.pre_backup",
                    "sh -c 'echo app is not ready >&2; exit 3'",
                )],
            ),
            service(
                "slow",
                &[
                    ("pgbackup.hook.pre_backup", "sleep 120"),
                    ("pgbackup.hook.timeout", "2s"),
                ],
            ),
        );
        let project = common::Project::new("ops", &compose);
        let up = project.compose(&["up", "-d", "--wait"]);
        assert!(up.status.success(), "{}{}", stdout(&up), stderr(&up));
        Ops { project, rx, dead }
    }

    fn target(&self, service: &str) -> String {
        format!("{}/{service}", self.project.project)
    }

    /// The notification settings: the receiver (every event, a header) and a dead port.
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("PGBACKUP_SCOPE", self.project.project.clone()),
            (
                "PGBACKUP_NOTIFY_URLS",
                format!(
                    "generic+http://127.0.0.1:{}/hook/{HOOK_TOKEN}?level=all&@Authorization=Bearer%20{HEADER_SECRET}, generic+http://127.0.0.1:{}/dead/{DEAD_TOKEN}?level=success",
                    self.rx.port, self.dead
                ),
            ),
            ("PGBACKUP_SCHEDULE", "off".into()),
        ]
    }
}

fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn no_secrets(what: &str, text: &str) {
    for s in [HOOK_TOKEN, HEADER_SECRET, DEAD_TOKEN, PING_GOOD, PING_BAD] {
        assert!(!text.contains(s), "{what} shows the secret {s}:\n{text}");
    }
}

#[test]
fn notifications_pings_and_hooks_tell_what_happened_and_keep_their_secrets() {
    let s = stack!();
    let ops = Ops::start();
    let mut env = ops.env();
    env.push(("PGBACKUP_RUN_ON_STARTUP", "false".into()));
    let mut ctl = s.host_controller(&env);
    let good = ops.target("good");
    ctl.wait_lists(&good);
    let backup = |t: &str| common::host_pgctl(&["backup", "--controller", &ctl.url, t]);

    // Success: the webhook (level=all) gets the event with its header; the dead receiver does
    // not hold the backup up (its three tries take 12 s; its failure is counted afterwards).
    let started = Instant::now();
    let o = backup(&good);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let took = started.elapsed();
    let metrics = receiver::get(&format!("{}/metrics", ctl.url));
    assert_eq!(
        metric(
            &metrics,
            "pgbackup_notifications_total",
            &[("result", "failed")]
        ),
        0.0,
        "the dead receiver is still being tried when the backup has returned (after {took:?})"
    );
    let hook = &ops.rx.wait_for(&format!("/hook/{HOOK_TOKEN}"), 1)[0];
    assert_eq!(hook.method, "POST");
    assert_eq!(
        hook.header("authorization"),
        Some(format!("Bearer {HEADER_SECRET}").as_str())
    );
    let ev = hook.json();
    assert_eq!(ev["event"], "backup.succeeded", "{ev}");
    assert_eq!(ev["target"], good.as_str());
    assert_eq!(ev["kind"], "logical");
    assert_eq!(ev["trigger"], "manual");
    assert!(
        ev["databases"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d == "app"),
        "{ev}"
    );
    assert!(ev["bytes"].as_u64().unwrap() > 0, "{ev}");
    let id = ev["backup_id"].as_str().unwrap().to_string();
    // Pings: start, then success, in that order.
    let pings = ops.rx.wait_for(&format!("/ping/{PING_GOOD}"), 2);
    let paths: Vec<&str> = pings.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            format!("/ping/{PING_GOOD}/start"),
            format!("/ping/{PING_GOOD}")
        ]
    );
    // The hooks ran inside the target, told who and what.
    let container = ops.project.container("good");
    let cat = |f: &str| common::docker(&["exec", &container, "cat", f]);
    assert_eq!(cat("/tmp/pre.txt"), format!("pre_backup {good} logical"));
    assert_eq!(cat("/tmp/post.txt"), format!("ok {id}"));
    // The dead receiver's failure, counted once its tries are over.
    let counted = wait_until(Duration::from_secs(40), || {
        let m = receiver::get(&format!("{}/metrics", ctl.url));
        (metric(
            &m,
            "pgbackup_notifications_total",
            &[("service", "webhook"), ("result", "failed")],
        ) >= 1.0)
            .then_some(m)
    })
    .expect("the undeliverable notification is counted in /metrics");
    assert_eq!(
        metric(
            &counted,
            "pgbackup_notifications_total",
            &[("result", "sent"), ("event", "backup.succeeded")]
        ),
        1.0,
        "{counted}"
    );

    // Failure: the error reaches the webhook and the fail ping.
    let bad = ops.target("bad");
    let o = backup(&bad);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    let failed: Vec<_> = ops
        .rx
        .wait_for(&format!("/hook/{HOOK_TOKEN}"), 2)
        .into_iter()
        .map(|r| r.json())
        .filter(|e| e["event"] == "backup.failed")
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["target"], bad.as_str());
    assert!(
        failed[0]["error"].as_str().unwrap().contains("nosuchdb"),
        "{}",
        failed[0]
    );
    let pings = ops.rx.wait_for(&format!("/ping/{PING_BAD}"), 2);
    assert_eq!(pings[0].path, format!("/ping/{PING_BAD}/start"));
    assert_eq!(pings[1].path, format!("/ping/{PING_BAD}/fail"));
    assert!(pings[1].body.contains("nosuchdb"), "{}", pings[1].body);

    // A failing pre-backup hook fails the backup with its output; nothing is written.
    let refusing = ops.target("refusing");
    let o = backup(&refusing);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert!(
        out.contains("pre_backup hook `sh -c 'echo app is not ready >&2; exit 3'` failed (exit code 3): app is not ready"),
        "{out}"
    );
    let listed = common::host_pgctl_env(&s, &["list", &refusing, "--json"], &env);
    assert_eq!(stdout(&listed).trim(), "[]", "{}", stderr(&listed));

    // A hook past its timeout is stopped inside the container.
    let slow = ops.target("slow");
    let o = backup(&slow);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("pre_backup hook `sleep 120` did not finish within 2s (pgbackup.hook.timeout) and was stopped"),
        "{}",
        stdout(&o)
    );
    let gone = wait_until(Duration::from_secs(15), || {
        let top = common::docker(&["top", &ops.project.container("slow")]);
        (!top.contains("sleep 120")).then_some(())
    });
    assert!(gone.is_some(), "the timed-out hook is no longer running");
    let m = receiver::get(&format!("{}/metrics", ctl.url));
    assert_eq!(
        metric(
            &m,
            "pgbackup_hook_failures_total",
            &[("hook", "pre_backup")]
        ),
        2.0,
        "{m}"
    );

    // No secret in the status, the metrics or the log.
    let status = common::host_pgctl(&["status", "--json", "--controller", &ctl.url]);
    no_secrets("pgctl status", &stdout(&status));
    assert!(
        stdout(&status).contains("healthchecks-style ping to 127.0.0.1"),
        "{}",
        stdout(&status)
    );
    no_secrets("/metrics", &m);
    let log = ctl.stop_and_log();
    assert!(
        log.contains("Could not deliver"),
        "the dead receiver is logged: {log}"
    );
    no_secrets("the controller's log", &log);
}

#[test]
fn run_once_backs_up_applies_retention_notifies_and_exits_with_the_outcome() {
    let s = stack!();
    let ops = Ops::start();
    let env = ops.env();
    let good = ops.target("good");
    let once = |args: &[&str], extra: &[(&str, &str)]| {
        let mut cmd = s.host_pgctl_cmd(args);
        for (k, v) in &env {
            cmd.env(k, v);
        }
        for (k, v) in extra {
            cmd.env(k, v);
        }
        cmd.env("PGBACKUP_HTTP_ADDR", "off").stdin(Stdio::null());
        common::run(&mut cmd)
    };

    // One target, twice, keeping the last backup: both succeed, the second run's retention
    // deletes the first, and the webhook hears of all three.
    let o = once(&["run", "--once", "good"], &[("RETENTION_KEEP_LAST", "1")]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    no_secrets("pgctl run --once", &stderr(&o));
    let o = once(&["run", "--once", &good], &[("RETENTION_KEEP_LAST", "1")]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let listed = common::host_pgctl_env(&s, &["list", &good, "--json"], &env);
    let v: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(
        v.as_array().unwrap().len(),
        1,
        "retention kept the newest only: {v}"
    );
    let mut events: Vec<String> = ops
        .rx
        .wait_for(&format!("/hook/{HOOK_TOKEN}"), 3)
        .iter()
        .map(|r| {
            format!(
                "{} {}",
                r.json()["event"].as_str().unwrap(),
                r.json()["trigger"].as_str().unwrap()
            )
        })
        .collect();
    events.sort();
    assert_eq!(
        events,
        [
            "backup.succeeded once",
            "backup.succeeded once",
            "retention.deleted once"
        ]
    );

    // Every target (PGBACKUP_SINGLE_SHOT): some fail, so exit 1, and each outcome is told.
    let o = once(&["run"], &[("PGBACKUP_SINGLE_SHOT", "true")]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("Single-shot run finished with failures"),
        "{}",
        stderr(&o)
    );
    let failed: Vec<String> = ops
        .rx
        .under(&format!("/hook/{HOOK_TOKEN}"))
        .iter()
        .map(|r| r.json())
        .filter(|e| e["event"] == "backup.failed")
        .map(|e| e["target"].as_str().unwrap().to_string())
        .collect();
    let mut failed = failed;
    failed.sort();
    assert_eq!(
        failed,
        [
            ops.target("bad"),
            ops.target("refusing"),
            ops.target("slow")
        ]
    );
    // Nothing is left running: no dump and no hook in any target.
    for svc in ["good", "bad", "refusing", "slow"] {
        let top = common::docker(&["top", &ops.project.container(svc)]);
        assert!(
            !top.contains("pg_dump") && !top.contains("sleep 120"),
            "{svc}: {top}"
        );
    }

    // An unknown name: exit 2 before anything runs.
    let o = once(&["run", "--once", "nosuch"], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("No valid target named nosuch"),
        "{}",
        stderr(&o)
    );
    no_secrets("pgctl run (single shot)", &stderr(&o));
}

#[test]
fn a_logical_restore_takes_pg_restore_options_and_post_sql_all_or_nothing() {
    let s = stack!();
    let ops = Ops::start();
    let env = ops.env();
    let good = ops.target("good");
    let db = ops.project.container("good");
    psql(
        &db,
        "app",
        "app",
        "CREATE ROLE keeper NOLOGIN; CREATE TABLE t (v text); INSERT INTO t VALUES ('secret-data'); ALTER TABLE t OWNER TO keeper;",
    );
    let pgctl = |args: &[&str]| common::host_pgctl_env(&s, args, &env);
    let o = common::run(
        s.host_pgctl_cmd(&["run", "--once", &good])
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("PGBACKUP_HTTP_ADDR", "off"),
    );
    assert!(o.status.success(), "{}", stderr(&o));

    let scripts = ops.project.dir.join("post-sql");
    std::fs::create_dir_all(&scripts).unwrap();
    std::fs::write(
        scripts.join("01-anonymize.sql"),
        "\\connect app\nUPDATE t SET v = 'anonymized';\n",
    )
    .unwrap();
    std::fs::write(
        scripts.join("02-mark.sql"),
        "\\connect app\nCREATE TABLE restored_at AS SELECT now() AS t;\n",
    )
    .unwrap();
    let dir = scripts.display().to_string();

    // --no-owner: the table belongs to the restoring user, not keeper; the scripts ran.
    psql(&db, "app", "app", "UPDATE t SET v = 'changed'");
    let o = pgctl(&[
        "restore",
        "latest",
        "--from",
        &good,
        "--to",
        &good,
        "--clean",
        "--restore-option=--no-owner",
        "--post-sql",
        &dir,
    ]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(psql(&db, "app", "app", "SELECT v FROM t"), "anonymized");
    assert_eq!(
        psql(
            &db,
            "app",
            "app",
            "SELECT tableowner FROM pg_tables WHERE tablename = 't'"
        ),
        "app"
    );
    assert_eq!(
        psql(&db, "app", "app", "SELECT count(*) FROM restored_at"),
        "1"
    );

    // A failing script: the old databases take their names back, nothing is left over.
    std::fs::write(scripts.join("03-fail.sql"), "\\connect app\nSELECT 1/0;\n").unwrap();
    let o = pgctl(&[
        "restore",
        "latest",
        "--from",
        &good,
        "--to",
        &good,
        "--clean",
        "--post-sql",
        &dir,
    ]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("post-restore script 03-fail.sql failed")
            && err.contains("Nothing was changed"),
        "{err}"
    );
    assert_eq!(
        psql(&db, "app", "app", "SELECT v FROM t"),
        "anonymized",
        "the data before this restore"
    );
    assert_eq!(
        psql(
            &db,
            "app",
            "app",
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'pgbackup_%'"
        ),
        "0"
    );

    // Options are checked against the allow-list; a plain backup refuses them.
    let o = pgctl(&[
        "restore",
        "latest",
        "--from",
        &good,
        "--to",
        &good,
        "--clean",
        "--restore-option=--schema=x",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--schema is not allowed"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn the_readme_snippet_runs_as_written_in_a_project_of_its_own() {
    let s = stack!();
    let snippet = common::readme_blocks("Adding pgbackup to your stack", "yaml")
        .into_iter()
        .next()
        .expect("the README's compose snippet");
    assert!(
        snippet.contains("image: postgres:17") && snippet.contains("image: pgbackup:local"),
        "{snippet}"
    );
    // What only this machine knows: its images, and the test stack's Garage for S3.
    let over = format!(
        r#"services:
  db:
    image: {pg}
  backup:
    image: {sidecar}
    environment:
      S3_ENDPOINT: http://garage:3900
      S3_REGION: garage
      S3_BUCKET: pgbackup
    networks: [default, e2e]
networks:
  e2e:
    name: {network}
    external: true
"#,
        pg = common::postgres_image(),
        sidecar = s.sidecar_image(),
        network = s.network(),
    );
    let p = common::Project::with_override("readme", &snippet, &over);
    std::fs::create_dir_all(p.dir.join("secrets")).unwrap();
    for (name, value) in [
        ("db_password", "snippet-password"),
        ("s3_key_id", "GK5a0696932d5415f414fe611f"),
        (
            "s3_secret",
            "9ee5125902ef55aa4941e05962e260ee547efe45d9c1ad3e2c2dfcaccb976025",
        ),
    ] {
        std::fs::write(p.dir.join("secrets").join(name), format!("{value}\n")).unwrap();
    }
    let up = p.compose(&["up", "-d", "--wait"]);
    assert!(up.status.success(), "{}{}", stdout(&up), stderr(&up));
    let db = p.container("db");
    common::wait_ready(&db);
    psql(
        &db,
        "app",
        "app",
        "CREATE TABLE t (v text); INSERT INTO t VALUES ('from-the-snippet')",
    );
    let target = format!("{}/db", p.project);
    let listed = wait_until(Duration::from_secs(30), || {
        let v: serde_json::Value =
            serde_json::from_slice(&p.pgctl(&["status", "--json"]).stdout).ok()?;
        v["targets"]
            .as_array()?
            .iter()
            .any(|t| t["target"] == target && t["state"] == "valid")
            .then_some(())
    });
    assert!(
        listed.is_some(),
        "the snippet's sidecar lists {target} as valid"
    );

    // The README's single-shot recipe, in the project's directory as written.
    let once = common::run(
        std::process::Command::new("sh")
            .args(["-c", "docker compose run --rm -T backup run --once"])
            .current_dir(&p.dir),
    );
    assert_eq!(
        once.status.code(),
        Some(0),
        "{}{}",
        stdout(&once),
        stderr(&once)
    );
    let o = p.pgctl(&["list", &target, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    let leftover = common::docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=com.docker.compose.project={}", p.project),
        "--filter",
        "label=com.docker.compose.oneoff=True",
    ]);
    assert_eq!(leftover, "", "the single-shot container is gone");

    // And back: the restore puts the data at backup time back.
    psql(&db, "app", "app", "UPDATE t SET v = 'changed'");
    let o = p.pgctl(&["restore", "latest", "--to", "db", "--clean"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(
        psql(&db, "app", "app", "SELECT v FROM t"),
        "from-the-snippet"
    );
}

#[test]
fn make_verify_takes_from_and_make_restore_says_pgctls_exit_code() {
    let s = stack!();
    let db = format!("{}/db", s.project);
    // A backup of its own: the test does not rely on what other tests left in the bucket.
    let o = s.pgctl(&["backup", "--wait", &db]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let compose = format!(
        "COMPOSE=docker compose -p {} -f compose.yaml -f compose.test.yaml",
        s.project
    );
    let make = |args: &[&str]| {
        common::run(
            std::process::Command::new("make")
                .arg("-s")
                .arg(&compose)
                .args(args)
                .current_dir(env!("CARGO_MANIFEST_DIR")),
        )
    };
    let o = make(&["verify", "FILE=latest", &format!("FROM={db}")]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).starts_with("ok"), "{}", stdout(&o));
    // make itself exits 2 on any failure; pgctl's own code is said.
    let o = make(&[
        "restore",
        "FILE=20200101T000000.000Z-000000-logical",
        &format!("FROM={db}"),
        "TO=db-restore",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("make: pgctl exited with code 2 (1 failed and rolled back;"),
        "{}",
        stderr(&o)
    );
}
