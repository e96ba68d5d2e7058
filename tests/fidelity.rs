//! End-to-end: restore fidelity on a cluster that looks like a real application's
//! (tests/fixtures/kitchen-sink: roles with memberships granted by a non-bootstrap role, several
//! databases with owners, closed to PUBLIC, comments and settings, one named `globals`, one whose
//! name needs quoting, extensions, large objects with grants, odd text, a million-row table).
//! Every path compares a fingerprint of the restored cluster (tests/fixtures/fingerprint-*.sql)
//! with the source's: it must be equal.

mod common;

use std::process::{Command, Stdio};

use common::fixture::*;
use common::{Cleanup, psql, stderr, stdout, unique};

#[test]
fn pg17_exec_custom_restores_exactly_into_an_empty_server_with_another_superuser() {
    let s = stack!();
    let src = source(&s, "fid17", &common::postgres_image(), &[]);
    let _c = Cleanup(src.clone());
    let before = fingerprint(&src, "postgres");
    let m = backup_manifest(&s, &src);
    let id = m["backup_id"].as_str().unwrap().to_string();
    let names: Vec<&str> = m["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"globals.sql.zst") && names.contains(&"%67lobals.dump.zst"),
        "{names:?}"
    );

    // An empty server whose superuser is not `postgres`.
    let dst = unique("fid17-to");
    let _d = Cleanup(dst.clone());
    start(&s, &dst, &common::postgres_image(), "dba", false, &[]);
    let out = pgctl_ok(&s, &["restore", &id, "--from", &src, "--to", &dst]);
    assert!(out.contains("restored"), "{out}");
    let after = fingerprint(&dst, "dba");
    assert_restored(
        &before,
        &after,
        &ALL,
        "PG17 exec custom → empty PG17 with superuser dba",
    );
    // Nothing temporary is left.
    assert_eq!(
        psql(
            &dst,
            "dba",
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'pgbackup%'"
        ),
        "0"
    );
}

#[test]
fn pg17_clean_after_damage_restores_exactly_and_a_failing_last_database_changes_nothing() {
    let s = stack!();
    let src = source(&s, "fidclean", &common::postgres_image(), &[]);
    let _c = Cleanup(src.clone());
    let before = fingerprint(&src, "postgres");
    let id = backup(&s, &src);

    // Damage: a table dropped, rows deleted, a large object unlinked, database properties changed,
    // an object added.
    psql(
        &src,
        "postgres",
        SHOP,
        "DROP TABLE app.notes; DELETE FROM app.events WHERE id % 3 = 0; SELECT lo_unlink(424243); CREATE TABLE public.stray (x int)",
    );
    psql(
        &src,
        "postgres",
        "postgres",
        "COMMENT ON DATABASE shop IS 'changed'; ALTER DATABASE shop RESET work_mem; GRANT CONNECT ON DATABASE shop TO PUBLIC",
    );
    psql(
        &src,
        "postgres",
        "globals",
        "UPDATE public.settings SET value = 'light'",
    );
    let damaged = fingerprint(&src, "postgres");
    assert_ne!(databases_of(&damaged, &ALL), databases_of(&before, &ALL));

    // Without --clean: refused, nothing changed.
    let o = s.pgctl(&["restore", &id, "--from", &src]);
    assert_eq!(o.status.code(), Some(4), "{}{}", stdout(&o), stderr(&o));
    assert!(stderr(&o).contains("--clean"), "{}", stderr(&o));

    // The last database of the backup fails (its object damaged in S3): every database stays
    // as it was, and the message says so.
    let cfg = common::s3_config(&s);
    let m = s
        .list(&src)
        .into_iter()
        .find(|m| m["backup_id"] == id.as_str())
        .unwrap();
    let prefix = m["prefix"].as_str().unwrap();
    let last = m["objects"]
        .as_array()
        .unwrap()
        .iter()
        .rfind(|o| o["kind"] == "database")
        .unwrap()
        .clone();
    let key = format!("{prefix}/{}", last["name"].as_str().unwrap());
    let original = common::get(&cfg, &key);
    let mut bad = original.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    common::put(&cfg, &key, bad);
    let o = s.pgctl(&["restore", &id, "--from", &src, "--clean"]);
    common::put(&cfg, &key, original);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    assert!(stderr(&o).contains("Nothing was changed"), "{}", stderr(&o));
    let d = diff(
        &databases_of(&damaged, &ALL),
        &databases_of(&fingerprint(&src, "postgres"), &ALL),
    );
    assert!(
        d.is_empty(),
        "a failed restore changed the databases:\n{}",
        d.join("\n")
    );
    assert_eq!(
        psql(
            &src,
            "postgres",
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'pgbackup%'"
        ),
        "0"
    );

    // --clean with a live writer connected: everything back exactly as at backup time.
    let writer = Command::new("docker")
        .args([
            "exec",
            &src,
            "psql",
            "-U",
            "postgres",
            "-d",
            SHOP,
            "-c",
            "SELECT pg_sleep(600)",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = pgctl_ok(&s, &["restore", &id, "--from", &src, "--clean"]);
    drop(writer);
    assert!(out.contains("restored"), "{out}");
    let after = fingerprint(&src, "postgres");
    assert_restored(&before, &after, &ALL, "--clean after damage");

    // --db: one database only; the others keep their (changed) state.
    psql(
        &src,
        "postgres",
        "globals",
        "UPDATE public.settings SET value = 'light'",
    );
    psql(&src, "postgres", SHOP, "DELETE FROM app.texts");
    pgctl_ok(
        &s,
        &["restore", &id, "--from", &src, "--db", "globals", "--clean"],
    );
    let after = fingerprint(&src, "postgres");
    assert_restored(&before, &after, &["globals"], "--db globals");
    assert_eq!(
        psql(&src, "postgres", SHOP, "SELECT count(*) FROM app.texts"),
        "0"
    );
}

/// A plain connect-mode backup (the sidecar's pg_dump 18, adapted to the server when written)
/// into its own major and a newer one; custom archives of every major: tests/majors.rs.
#[test]
fn pg15_connect_plain_restores_exactly_into_pg15_and_into_pg17() {
    let s = stack!();
    let pg15 = common::postgres15_image();
    let format = "plain";
    let src = source(
        &s,
        &format!("fid15{format}"),
        &pg15,
        &[("pgbackup.method", "connect"), ("pgbackup.format", format)],
    );
    let _c = Cleanup(src.clone());
    let before = fingerprint(&src, "postgres");
    let id = backup(&s, &src);
    // Into its own major: the sidecar's newer pg_dump must not stand in the way.
    let dst = unique(&format!("fid15{format}-to"));
    let _d = Cleanup(dst.clone());
    start(&s, &dst, &pg15, "postgres", false, &[]);
    let empty = fingerprint(&dst, "postgres");
    pgctl_ok(&s, &["restore", &id, "--from", &src, "--to", &dst]);
    assert_restored_over(
        &before,
        &empty,
        &fingerprint(&dst, "postgres"),
        &ALL,
        &format!("PG15 connect {format} → PG15"),
    );
    // And into a newer major.
    let dst17 = unique(&format!("fid15{format}-to17"));
    let _d17 = Cleanup(dst17.clone());
    start(
        &s,
        &dst17,
        &common::postgres_image(),
        "postgres",
        false,
        &[],
    );
    let empty = fingerprint(&dst17, "postgres");
    pgctl_ok(&s, &["restore", &id, "--from", &src, "--to", &dst17]);
    assert_restored_over(
        &across_majors(&before),
        &across_majors(&empty),
        &across_majors(&fingerprint(&dst17, "postgres")),
        &ALL,
        &format!("PG15 connect {format} → PG17"),
    );
}

/// The failure the old restore hid: the last database fails after the others loaded (its
/// grants name a role the target lacks: the database's own, applied before its load, and its
/// tables', in the archive's final ACL section). Every database must stay as it was, and the
/// message must say so only because it is true.
#[test]
fn a_database_failing_at_its_end_leaves_every_database_unchanged() {
    let s = stack!();
    let src = source(
        &s,
        "fidlate",
        &common::postgres_image(),
        &[("pgbackup.globals", "false")],
    );
    let _c = Cleanup(src.clone());
    let id = backup(&s, &src);
    let dst = unique("fidlate-to");
    let _d = Cleanup(dst.clone());
    start(&s, &dst, &common::postgres_image(), "postgres", false, &[]);
    // Every role the backup's databases need but `reader`, and databases of the same names
    // holding data of their own.
    psql(
        &dst,
        "postgres",
        "postgres",
        "CREATE ROLE admin; CREATE ROLE alice; CREATE ROLE app_owner; CREATE ROLE \"Ops Team\"; CREATE ROLE writer",
    );
    for db in ["globals", ODD, SHOP] {
        psql(
            &dst,
            "postgres",
            "postgres",
            &format!("CREATE DATABASE \"{}\"", db.replace('"', "\"\"")),
        );
        psql(
            &dst,
            "postgres",
            db,
            "CREATE TABLE mine AS SELECT 'kept' AS v",
        );
    }
    let before = fingerprint(&dst, "postgres");
    let o = s.pgctl(&["restore", &id, "--from", &src, "--to", &dst, "--clean"]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("\"reader\" does not exist"), "{err}");
    assert!(err.contains("restoring database \"shop\""), "{err}");
    assert!(err.contains("Nothing was changed"), "{err}");
    let d = diff(&before, &fingerprint(&dst, "postgres"));
    assert!(
        d.is_empty(),
        "a failed restore changed the target:\n{}",
        d.join("\n")
    );
    assert_eq!(
        psql(&dst, "postgres", "globals", "SELECT v FROM mine"),
        "kept"
    );
    assert_eq!(
        psql(
            &dst,
            "postgres",
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'pgbackup%'"
        ),
        "0"
    );
}
