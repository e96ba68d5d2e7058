//! End-to-end: logical restore on the real stack, all or nothing; `verify`; `latest` among many
//! objects; retention (`prune`) over a two-year history. Every restore goes into the stack's
//! `db-restore` (Postgres 17) through `pgctl restore`, and every table's contents are compared.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use common::{Cleanup, Stack, psql, stderr, stdout, unique, wait_until};
use serde_json::Value;

/// Objects, types and values a restore must bring back: schemas, an enum, serial and bigserial
/// sequences, a foreign key, a view, jsonb, bytea, arrays, NULLs, non-ASCII text, an owner role.
fn seed(container: &str, db: &str, role: &str) {
    psql(
        container,
        "postgres",
        "postgres",
        &format!("CREATE ROLE {role} LOGIN"),
    );
    psql(
        container,
        "postgres",
        "postgres",
        &format!("CREATE DATABASE {db}"),
    );
    psql(
        container,
        "postgres",
        db,
        &format!(
            "CREATE SCHEMA sales AUTHORIZATION {role};
             CREATE TYPE sales.status AS ENUM ('new', 'paid', 'shipped');
             CREATE TABLE sales.customers(id serial PRIMARY KEY, name text NOT NULL, email text UNIQUE,
                 meta jsonb, photo bytea, tags text[], created timestamptz);
             CREATE TABLE sales.orders(id bigserial PRIMARY KEY, customer int REFERENCES sales.customers,
                 status sales.status, amount numeric(12,2), note text);
             ALTER TABLE sales.orders OWNER TO {role};
             CREATE VIEW sales.totals AS SELECT customer, sum(amount) AS total FROM sales.orders GROUP BY 1;
             CREATE TABLE public.log(at timestamptz, line text);
             INSERT INTO sales.customers(name, email, meta, photo, tags, created)
               SELECT 'Kunde ' || g || CASE WHEN g % 5 = 0 THEN ' Zürich ✓' ELSE '' END,
                      CASE WHEN g % 7 = 0 THEN NULL ELSE 'c' || g || '@example.org' END,
                      jsonb_build_object('n', g, 'vip', g % 3 = 0, 'nested', jsonb_build_array(g, 'x')),
                      decode(md5(g::text), 'hex'), ARRAY['t' || (g % 4), 'all'],
                      timestamptz '2026-01-01 00:00+00' + g * interval '1 hour'
               FROM generate_series(1, 2000) g;
             INSERT INTO sales.orders(customer, status, amount, note)
               SELECT 1 + g % 2000, (ARRAY['new','paid','shipped'])[1 + g % 3]::sales.status,
                      (g * 7.31)::numeric(12,2), CASE WHEN g % 11 = 0 THEN NULL ELSE repeat('n', g % 50) END
               FROM generate_series(1, 6000) g;
             INSERT INTO public.log SELECT timestamptz '2026-02-01 00:00+00' + g * interval '1 s', 'line ' || g
               FROM generate_series(1, 1000) g;"
        ),
    );
}

/// Every table's and view's whole contents (rows sorted by their text), sequence positions and
/// owners.
fn contents(container: &str, user: &str, db: &str) -> BTreeMap<String, String> {
    let system = "schemaname NOT IN ('pg_catalog', 'information_schema')";
    let relations = psql(
        container,
        user,
        db,
        &format!(
            "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables WHERE {system}
             UNION ALL SELECT format('%I.%I', schemaname, viewname) FROM pg_views WHERE {system}
             ORDER BY 1"
        ),
    );
    let mut out = BTreeMap::new();
    for t in relations.lines() {
        out.insert(
            t.to_string(),
            psql(
                container,
                user,
                db,
                &format!("COPY (SELECT * FROM {t} x ORDER BY x::text) TO STDOUT"),
            ),
        );
    }
    out.insert(
        "(sequences)".into(),
        psql(container, user, db, &format!(
            "SELECT schemaname, sequencename, last_value FROM pg_sequences WHERE {system} ORDER BY 1, 2"
        )),
    );
    out.insert(
        "(owners)".into(),
        psql(container, user, db, &format!(
            "SELECT schemaname, tablename, tableowner FROM pg_tables WHERE {system} ORDER BY 1, 2"
        )),
    );
    out
}

fn restore_db(s: &Stack) -> String {
    s.container("db-restore")
}

/// A labelled source Postgres with a seeded database; returns (container, database, role).
fn source(
    s: &Stack,
    prefix: &str,
    image: &str,
    labels: &[(&str, &str)],
) -> (String, String, String) {
    let name = unique(prefix);
    let mut all = vec![("pgbackup.enable", "true"), ("pgbackup.schedule", "off")];
    all.extend_from_slice(labels);
    s.start_pg_image(&name, image, &all);
    let suffix = name.rsplit('-').next().unwrap().to_string();
    let db = format!("shop_{suffix}");
    let role = format!("owner_{suffix}");
    seed(&name, &db, &role);
    wait_until(Duration::from_secs(10), || s.target(&name)).expect("the source is discovered");
    (name, db, role)
}

/// `pgctl backup --wait TARGET`; returns the new backup's manifest as listed.
fn backup(s: &Stack, target: &str) -> Value {
    let o = s.pgctl(&["backup", "--wait", target]);
    assert!(
        o.status.success(),
        "backup failed: {}{}",
        stdout(&o),
        stderr(&o)
    );
    let id = stdout(&o)
        .split_whitespace()
        .nth(2)
        .expect("backup id in the output")
        .to_string();
    s.list(target)
        .into_iter()
        .find(|m| m["backup_id"] == id.as_str())
        .expect("the new backup is listed")
}

/// Restores into db-restore run one at a time: two restores creating the same missing role at
/// once would fail one of them (cleanly, but not what these tests are about).
static RESTORES: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn pgctl(s: &Stack, args: &[&str]) -> std::process::Output {
    let _one = RESTORES.lock().unwrap_or_else(|p| p.into_inner());
    s.pgctl(args)
}

fn pgctl_ok(s: &Stack, args: &[&str]) -> String {
    common::fixture::succeeded(args, pgctl(s, args))
}

#[test]
fn exec_pg17_full_cycle_into_db_restore() {
    let s = stack!();
    let (src, db, role) = source(&s, "rs17", &common::postgres_image(), &[]);
    let _c = Cleanup(src.clone());
    let m = backup(&s, &src);
    assert_eq!(m["format"], "custom");

    let out = pgctl_ok(
        &s,
        &[
            "restore",
            "latest",
            "--from",
            &src,
            "--to",
            "db-restore",
            "--db",
            &db,
        ],
    );
    assert!(out.contains(m["backup_id"].as_str().unwrap()), "{out}");
    assert!(
        out.contains("roles created:") && out.contains(&role),
        "{out}"
    );

    let target = restore_db(&s);
    assert_eq!(
        contents(&target, "app", &db),
        contents(&src, "postgres", &db)
    );
    assert_eq!(
        psql(
            &target,
            "app",
            "postgres",
            &format!("SELECT rolcanlogin FROM pg_roles WHERE rolname = '{role}'")
        ),
        "t",
        "the owner role came back from the globals"
    );
}

#[test]
fn connect_pg15_plain_full_cycle_into_pg17() {
    let s = stack!();
    let (src, db, _role) = source(
        &s,
        "rs15",
        &common::postgres15_image(),
        &[("pgbackup.method", "connect"), ("pgbackup.format", "plain")],
    );
    let _c = Cleanup(src.clone());
    let m = backup(&s, &src);
    assert_eq!(m["postgres"]["major"], 15);
    assert_eq!(m["format"], "plain");

    // By full key this time, as `make restore FILE=…` passes it.
    let key = format!("{}/{}.sql.zst", m["prefix"].as_str().unwrap(), db);
    let out = pgctl_ok(&s, &["restore", &key, "--to", "db-restore"]);
    assert!(
        out.contains("Postgres 15") && out.contains("Postgres 17"),
        "{out}"
    );
    let target = restore_db(&s);
    assert_eq!(
        contents(&target, "app", &db),
        contents(&src, "postgres", &db)
    );
}

#[test]
fn restore_over_existing_data_needs_clean() {
    let s = stack!();
    let (src, db, _) = source(&s, "rsclean", &common::postgres_image(), &[]);
    let _c = Cleanup(src.clone());
    backup(&s, &src);
    let target = restore_db(&s);
    psql(&target, "app", "postgres", &format!("CREATE DATABASE {db}"));
    psql(
        &target,
        "app",
        &db,
        "CREATE TABLE keepme(v text); INSERT INTO keepme VALUES ('precious')",
    );
    let before = contents(&target, "app", &db);

    let o = pgctl(
        &s,
        &[
            "restore",
            "latest",
            "--from",
            &src,
            "--to",
            "db-restore",
            "--db",
            &db,
        ],
    );
    assert_eq!(o.status.code(), Some(4), "refused: {}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("--clean") && err.contains(&db) && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(contents(&target, "app", &db), before, "nothing changed");

    pgctl_ok(
        &s,
        &[
            "restore",
            "latest",
            "--from",
            &src,
            "--to",
            "db-restore",
            "--db",
            &db,
            "--clean",
        ],
    );
    let after = contents(&target, "app", &db);
    assert!(
        !after.contains_key("public.keepme"),
        "--clean replaced the old objects"
    );
    assert_eq!(after, contents(&src, "postgres", &db));
}

/// Flips a byte in the middle of an object, or cuts it in half.
fn damage(cfg: &pgbackup::config::S3Config, key: &str, original: &[u8], truncate: bool) {
    let mut bad = original.to_vec();
    if truncate {
        bad.truncate(bad.len() / 2);
    } else {
        let mid = bad.len() / 2;
        bad[mid] ^= 0x20;
    }
    common::put(cfg, key, bad);
}

#[test]
fn damaged_or_interrupted_restores_change_nothing() {
    let s = stack!();
    let cfg = common::s3_config(&s);
    let (src, db, _) = source(&s, "rsbad", &common::postgres_image(), &[]);
    let _c = Cleanup(src.clone());
    let first = backup(&s, &src);
    let target = restore_db(&s);
    pgctl_ok(
        &s,
        &[
            "restore",
            first["prefix"].as_str().unwrap(),
            "--to",
            "db-restore",
            "--db",
            &db,
        ],
    );
    let restored = contents(&target, "app", &db);

    // A newer backup with different data, then damaged in storage.
    psql(
        &src,
        "postgres",
        &db,
        "UPDATE sales.orders SET note = 'changed'; DELETE FROM public.log WHERE random() < 0.5",
    );
    std::thread::sleep(Duration::from_millis(1100));
    let second = backup(&s, &src);
    let prefix = second["prefix"].as_str().unwrap().to_string();
    let key = format!("{prefix}/{db}.dump.zst");
    let original = common::get(&cfg, &key);

    for (truncate, word) in [(false, "corrupted"), (true, "truncated")] {
        damage(&cfg, &key, &original, truncate);
        let v = s.pgctl(&["verify", &prefix]);
        assert_eq!(
            v.status.code(),
            Some(1),
            "verify reports damage: {}",
            stdout(&v)
        );
        assert!(
            stdout(&v).contains("DAMAGED") && stdout(&v).contains(word),
            "{}",
            stdout(&v)
        );
        let good = pgctl_ok(&s, &["verify", first["prefix"].as_str().unwrap()]);
        assert!(good.starts_with("ok"), "{good}");

        let o = pgctl(
            &s,
            &[
                "restore",
                &prefix,
                "--to",
                "db-restore",
                "--db",
                &db,
                "--clean",
            ],
        );
        assert_eq!(
            o.status.code(),
            Some(1),
            "restore fails: {}{}",
            stdout(&o),
            stderr(&o)
        );
        assert!(stderr(&o).contains("Nothing was changed"), "{}", stderr(&o));
        assert_eq!(
            contents(&target, "app", &db),
            restored,
            "{word} object: data unchanged"
        );
    }
    common::put(&cfg, &key, original);
    assert!(pgctl_ok(&s, &["verify", &prefix]).starts_with("ok"));

    // A big backup, and a restore killed half-way (the pgctl process, on the host).
    psql(&src, "postgres", &db, common::BIG_TABLE);
    std::thread::sleep(Duration::from_millis(1100));
    let big = backup(&s, &src);
    let one = RESTORES.lock().unwrap_or_else(|p| p.into_inner());
    let mut child = s
        .host_pgctl_cmd(&[
            "restore",
            big["prefix"].as_str().unwrap(),
            "--to",
            &target,
            "--db",
            &db,
            "--clean",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start pgctl restore on the host");
    let copying = wait_until(Duration::from_secs(60), || {
        let n = psql(
            &target,
            "app",
            "postgres",
            // Loads go into a new database, swapped in at the end.
            "SELECT count(*) FROM pg_stat_activity WHERE datname LIKE 'pgbackup\\_restore\\_%' AND query ILIKE 'COPY public.big%'",
        );
        (n != "0").then_some(())
    });
    assert!(copying.is_some(), "the restore reached the big table");
    child.kill().unwrap();
    child.wait().unwrap();
    let gone = wait_until(Duration::from_secs(60), || {
        let n = psql(
            &target,
            "app",
            "postgres",
            // The loads' sessions and the run's own (named by its application_name).
            "SELECT count(*) FROM pg_stat_activity WHERE datname LIKE 'pgbackup\\_restore\\_%' OR application_name LIKE 'pgbackup\\_restore\\_%'",
        );
        (n == "0").then_some(())
    });
    assert!(
        gone.is_some(),
        "the restore's session ended when pgctl died"
    );
    assert_eq!(
        contents(&target, "app", &db),
        restored,
        "killed restore: data unchanged"
    );
    // Killed outright, pgctl could not drop its temporary database: the next restore sees that
    // no session of that run is alive, names it in its plan and drops it first.
    let left = psql(
        &target,
        "app",
        "postgres",
        "SELECT datname FROM pg_database WHERE datname LIKE 'pgbackup\\_restore\\_%'",
    );
    assert_eq!(left.lines().count(), 1, "{left}");
    // Still holding the restore lock: another test's restore into db-restore would clean this
    // leftover up before this one sees it.
    let args = ["restore", &prefix, "--to", &target, "--db", &db, "--clean"];
    let dry = [&args[..], &["--dry-run"]].concat();
    let plan = common::fixture::succeeded(&dry, s.pgctl(&dry));
    assert!(
        plan.contains(&format!(
            "cleanup    {left}: the temporary database of an interrupted restore"
        )),
        "{plan}"
    );
    common::fixture::succeeded(&args, s.pgctl(&args));
    let after = psql(
        &target,
        "app",
        "postgres",
        "SELECT datname FROM pg_database WHERE datname LIKE 'pgbackup\\_%'",
    );
    drop(one);
    assert_eq!(after, "", "the interrupted run's database was dropped");
}

#[test]
fn latest_skips_newer_uncommitted_backup_among_many_objects() {
    let s = stack!();
    let cfg = common::s3_config(&s);
    let (src, db, _) = source(&s, "rslatest", &common::postgres_image(), &[]);
    let _c = Cleanup(src.clone());
    let older = backup(&s, &src);
    psql(
        &src,
        "postgres",
        &db,
        "INSERT INTO public.log VALUES (now(), 'newer backup')",
    );
    std::thread::sleep(Duration::from_millis(1100));
    let newer = backup(&s, &src);

    // A newer backup that never committed, holding 1,100 objects.
    let dir = newer["prefix"]
        .as_str()
        .unwrap()
        .rsplit_once('/')
        .unwrap()
        .0
        .to_string();
    let junk_id = format!(
        "{}-logical",
        (Utc::now() + chrono::Duration::hours(1)).format("%Y%m%dT%H%M%SZ")
    );
    common::put_many(
        &cfg,
        (0..1100)
            .map(|i| (format!("{dir}/{junk_id}/part-{i:04}"), vec![b'x'; 16]))
            .collect(),
    );

    let out = pgctl_ok(
        &s,
        &[
            "restore",
            "latest",
            "--from",
            &src,
            "--to",
            "db-restore",
            "--db",
            &db,
            "--dry-run",
        ],
    );
    let newer_id = newer["backup_id"].as_str().unwrap();
    assert!(out.contains(newer_id), "{out}");
    assert!(
        !out.contains(&junk_id) && !out.contains(older["backup_id"].as_str().unwrap()),
        "{out}"
    );
    assert!(out.contains("dry run"), "{out}");
    let target = restore_db(&s);
    let exists = psql(
        &target,
        "app",
        "postgres",
        &format!("SELECT count(*) FROM pg_database WHERE datname = '{db}'"),
    );
    assert_eq!(exists, "0", "--dry-run changed nothing");

    let verified = pgctl_ok(&s, &["verify", "latest", "--from", &src]);
    assert!(verified.contains(newer_id), "{verified}");
    pgctl_ok(
        &s,
        &[
            "restore",
            "latest",
            "--from",
            &src,
            "--to",
            "db-restore",
            "--db",
            &db,
        ],
    );
    assert_eq!(
        contents(&target, "app", &db),
        contents(&src, "postgres", &db)
    );
    assert_eq!(
        s.list(&src).len(),
        2,
        "the uncommitted backup is not listed"
    );
}

fn fake_manifest(target: &str, dir: &str, t: DateTime<Utc>) -> pgbackup::model::manifest::Manifest {
    use pgbackup::model::layout::{BackupId, Kind};
    use pgbackup::model::manifest::*;
    let id = BackupId::new(t, Kind::Logical);
    Manifest {
        format_version: FORMAT_VERSION,
        backup_id: id,
        kind: Kind::Logical,
        target: target.into(),
        prefix: format!("{dir}/{id}"),
        container: "gone".into(),
        method: pgbackup::model::Method::Exec,
        format: pgbackup::model::Format::Custom,
        compression: "none".into(),
        postgres: Postgres {
            server_version: "17.0".into(),
            major: 17,
            dump_tool: "pg_dump (PostgreSQL) 17.0".into(),
        },
        databases: vec!["app".into()],
        objects: vec![Object {
            name: "app.dump".into(),
            kind: ObjectKind::Database,
            database: Some("app".into()),
            size: 4,
            raw_size: 4,
            sha256: "88d4266fd4e6338d13b845fcf289579d209c897823b9217da3e161936f031589".into(),
        }],
        started_at: t,
        finished_at: t,
        tool: Tool::default(),
        physical: None,
        facts: None,
        encryption: None,
    }
}

/// Two targets with a backup every day at 03:00 UTC for two years; the first also has two more
/// on its last day and a fresh uncommitted folder.
fn two_year_history(cfg: &pgbackup::config::S3Config, root: &str) -> Vec<DateTime<Utc>> {
    let mut times = Vec::new();
    let mut t = Utc.with_ymd_and_hms(2024, 12, 1, 3, 0, 0).unwrap();
    while t <= Utc.with_ymd_and_hms(2026, 11, 30, 3, 0, 0).unwrap() {
        times.push(t);
        t += chrono::Duration::days(1);
    }
    let mut objects = Vec::new();
    for target in ["a", "b"] {
        let dir = format!("{root}/{target}");
        let mut mine = times.clone();
        if target == "a" {
            mine.push(Utc.with_ymd_and_hms(2026, 11, 30, 3, 10, 0).unwrap());
            mine.push(Utc.with_ymd_and_hms(2026, 11, 30, 3, 20, 0).unwrap());
            objects.push((
                format!("{dir}/20261130T040000Z-logical/app.dump"),
                b"half".to_vec(),
            ));
        }
        for t in mine {
            let m = fake_manifest(&format!("{root}/{target}"), &dir, t);
            objects.push((format!("{}/app.dump", m.prefix), b"abcd".to_vec()));
            objects.push((
                format!("{}/manifest.json", m.prefix),
                m.to_json().into_bytes(),
            ));
        }
    }
    common::put_many(cfg, objects);
    times
}

fn folders(cfg: &pgbackup::config::S3Config, dir: &str) -> Vec<String> {
    common::block_on(async {
        pgbackup::store::catalog::folders(&common::s3_store(cfg).await, dir)
            .await
            .unwrap()
            .iter()
            .map(|id| id.to_string())
            .collect()
    })
}

#[test]
fn prune_two_year_history_keeps_the_planned_set_only() {
    let s = stack!();
    let cfg = common::s3_config(&s);
    let root = unique("prune");
    let days = two_year_history(&cfg, &root);
    let prune = |dry: bool| {
        let container = s.container("backup");
        let mut args = vec![
            "exec",
            "-e",
            "TZ=UTC",
            "-e",
            "RETENTION_KEEP_DAILY=3",
            "-e",
            "RETENTION_KEEP_MONTHLY=2",
            "-e",
            "RETENTION_KEEP_YEARLY=2",
            "-e",
            "RETENTION_MIN_BACKUPS=1",
            &container,
            "pgctl",
            "prune",
        ];
        if dry {
            args.push("--dry-run");
        }
        let a = format!("{root}/a");
        args.push(&a);
        let o = common::run(std::process::Command::new("docker").args(&args));
        assert!(
            o.status.success(),
            "prune failed: {}{}",
            stdout(&o),
            stderr(&o)
        );
        stdout(&o)
    };
    let expected = [
        "20251231T030000Z-logical",
        "20261031T030000Z-logical",
        "20261128T030000Z-logical",
        "20261129T030000Z-logical",
        "20261130T032000Z-logical",
    ];

    let plan = prune(true);
    // Retention's keeps; the young uncommitted folder is listed as kept apart, with its age.
    let kept: Vec<&str> = plan
        .lines()
        .filter(|l| !l.contains("uncommitted"))
        .filter_map(|l| l.trim_start().strip_prefix("keep"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        plan.lines().any(|l| l.contains("20261130T040000Z-logical")
            && l.contains("may be a backup still running")),
        "{plan}"
    );
    let mut sorted = kept.clone();
    sorted.sort();
    assert_eq!(sorted, expected, "{plan}");
    assert!(
        plan.contains("daily 2026-11-29") && plan.contains("yearly 2025"),
        "{plan}"
    );
    assert!(plan.contains("(dry run: nothing was deleted)"), "{plan}");
    assert_eq!(
        folders(&cfg, &format!("{root}/a")).len(),
        days.len() + 3,
        "dry run deleted nothing"
    );

    prune(false);
    let mut left = folders(&cfg, &format!("{root}/a"));
    left.sort();
    let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    // The uncommitted folder is younger than a day: it may belong to a running backup.
    want.push("20261130T040000Z-logical".into());
    want.sort();
    assert_eq!(left, want);
    assert_eq!(
        folders(&cfg, &format!("{root}/b")).len(),
        days.len(),
        "the other target is untouched"
    );
    let manifests = common::keys(&cfg, &format!("{root}/a/"));
    assert_eq!(
        manifests.len(),
        expected.len() * 2 + 1,
        "whole backups were deleted: {manifests:?}"
    );
}

#[test]
fn scheduled_backups_apply_label_retention() {
    let s = stack!();
    let name = unique("rskeep");
    let _c = Cleanup(name.clone());
    s.start_pg(
        &name,
        &[
            ("pgbackup.enable", "true"),
            ("pgbackup.schedule", "*/3 * * * * *"),
            ("pgbackup.globals", "false"),
            ("pgbackup.keep.last", "2"),
        ],
    );
    let first = wait_until(Duration::from_secs(30), || {
        s.list(&name)
            .first()
            .map(|m| m["backup_id"].as_str().unwrap().to_string())
    })
    .expect("a scheduled backup");
    // Retention runs after each scheduled backup: the oldest ones go, two stay.
    let kept = wait_until(Duration::from_secs(60), || {
        let ids: Vec<String> = s
            .list(&name)
            .iter()
            .map(|m| m["backup_id"].as_str().unwrap().to_string())
            .collect();
        (ids.len() == 2 && !ids.contains(&first)).then_some(ids)
    });
    assert!(
        kept.is_some(),
        "retention did not prune {first}: {:?}",
        s.list(&name)
    );
    for _ in 0..5 {
        assert!(
            s.list(&name).len() <= 3,
            "never more than keep.last plus the one being written"
        );
        std::thread::sleep(Duration::from_millis(700));
    }
}

/// `verify --all` counts a backup whose manifest cannot be read as damaged (exit 1), in the
/// table and in JSON; it used to omit it and exit 0.
#[test]
fn verify_all_reports_an_unreadable_manifest_and_fails() {
    let s = stack!();
    let cfg = common::s3_config(&s);
    let prefix = unique("verify-unreadable");
    let key = format!("{prefix}/proj/db/20260101T000000Z-logical/manifest.json");
    common::put(&cfg, &key, b"{ this is not a manifest".to_vec());
    let o = common::run(
        s.host_pgctl_cmd(&["verify", "--all"])
            .env("S3_PREFIX", &prefix),
    );
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("DAMAGED") && stdout(&o).contains(&key),
        "{}",
        stdout(&o)
    );
    let o = common::run(
        s.host_pgctl_cmd(&["verify", "--all", "--json"])
            .env("S3_PREFIX", &prefix),
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v[0]["ok"], false);
    assert!(v[0]["damage"][0].as_str().unwrap().contains(&key), "{v}");
}

/// Objects are read from the folder the manifest is in, not the folder written inside it: a
/// copy of a backup is verified on its own bytes (damage in the copy is found), and its
/// SHA256SUMS is checked against the manifest.
#[test]
fn a_copied_backup_is_verified_where_it_is() {
    let s = stack!();
    let cfg = common::s3_config(&s);
    let (src, _db, _role) = source(&s, "copied", &common::postgres_image(), &[]);
    let _c = Cleanup(src.clone());
    let m = backup(&s, &src);
    let prefix = m["prefix"].as_str().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let names = common::download(&cfg, &prefix, dir.path());
    let copy = format!("{}/{}", unique("copy"), prefix);
    for n in &names {
        common::put(
            &cfg,
            &format!("{copy}/{n}"),
            std::fs::read(dir.path().join(n)).unwrap(),
        );
    }
    assert!(pgctl_ok(&s, &["verify", &copy]).starts_with("ok"));
    // Damage one database object of the copy only.
    let object = m["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["kind"] == "database")
        .unwrap()["name"]
        .as_str()
        .unwrap()
        .to_string();
    let mut bytes = std::fs::read(dir.path().join(&object)).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    common::put(&cfg, &format!("{copy}/{object}"), bytes);
    let o = s.pgctl(&["verify", &copy]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("DAMAGED") && stdout(&o).contains(&object),
        "{}",
        stdout(&o)
    );
    // The original is untouched and still verifies; a copy with a wrong SHA256SUMS does not.
    assert!(pgctl_ok(&s, &["verify", &prefix]).starts_with("ok"));
    common::put(
        &cfg,
        &format!("{copy}/{object}"),
        std::fs::read(dir.path().join(&object)).unwrap(),
    );
    common::put(
        &cfg,
        &format!("{copy}/SHA256SUMS"),
        b"0000  nothing\n".to_vec(),
    );
    let o = s.pgctl(&["verify", &copy]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stdout(&o).contains("SHA256SUMS"), "{}", stdout(&o));
}
