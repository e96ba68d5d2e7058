//! End-to-end: restore fidelity on a cluster that looks like a real application's
//! (tests/fixtures/kitchen-sink: roles with memberships granted by a non-bootstrap role, several
//! databases with owners, closed to PUBLIC, comments and settings, one named `globals`, one whose
//! name needs quoting, extensions, large objects with grants, odd text, a million-row table).
//! Every path compares a fingerprint of the restored cluster (tests/fixtures/fingerprint-*.sql)
//! with the source's: it must be equal.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Cleanup, Stack, psql, stderr, stdout, unique, wait_until};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/kitchen-sink");
const CLUSTER_SQL: &str = include_str!("fixtures/fingerprint-cluster.sql");
const DATABASE_SQL: &str = include_str!("fixtures/fingerprint-database.sql");
const SHOP: &str = "shop";
const ODD: &str = "Reporting \"Q4\" / données ✓";

/// A Postgres started from `image` on the stack's network with `labels`; when `fixture`, the
/// kitchen sink is created by its init scripts. Ready for queries when this returns.
fn start(s: &Stack, name: &str, image: &str, user: &str, fixture: bool, labels: &[(&str, &str)]) {
    let mut extra = vec![
        "--network".to_string(),
        s.network(),
        "-e".into(),
        format!("POSTGRES_USER={user}"),
    ];
    if fixture {
        extra.push("-v".into());
        extra.push(format!("{FIXTURE}:/docker-entrypoint-initdb.d:ro"));
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    s.start_image(name, image, labels, &extra);
    // The init scripts load a million rows before the server listens on TCP.
    let ready = || common::pg_ready(name).then_some(());
    assert!(
        wait_until(Duration::from_secs(300), ready).is_some(),
        "{name} did not become ready: {}",
        common::docker(&["logs", "--tail", "30", name])
    );
    std::thread::sleep(Duration::from_secs(1));
    wait_until(Duration::from_secs(30), ready).expect("ready again");
}

/// A labelled kitchen-sink source (superuser `postgres`), discovered by the sidecar.
fn source(s: &Stack, prefix: &str, image: &str, labels: &[(&str, &str)]) -> String {
    let name = unique(prefix);
    let mut all = vec![("pgbackup.enable", "true"), ("pgbackup.schedule", "off")];
    all.extend_from_slice(labels);
    start(s, &name, image, "postgres", true, &all);
    wait_until(Duration::from_secs(20), || s.target(&name)).expect("the source is discovered");
    name
}

/// `psql -XAt` with `sql` on stdin; every output line.
fn psql_script(container: &str, user: &str, db: &str, sql: &str) -> String {
    let mut child = Command::new("docker")
        .args([
            "exec",
            "-i",
            container,
            "psql",
            "-X",
            "-A",
            "-t",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-U",
            user,
            "-d",
            db,
            "-f",
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("docker exec psql");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(sql.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "fingerprint of {container}/{db} failed: {}",
        stderr(&o)
    );
    stdout(&o)
}

/// `section|key` → value, for lines of `section|key|value` (a value with newlines continues on
/// the lines that do not start a section).
fn parse(out: &str, prefix: &str, into: &mut BTreeMap<String, String>) {
    let mut last: Option<String> = None;
    for line in out.lines() {
        let starts = line.split_once('|').is_some_and(|(sec, _)| {
            !sec.is_empty() && sec.chars().all(|c| c.is_ascii_lowercase() || c == '-')
        });
        if starts {
            let (sec, rest) = line.split_once('|').unwrap();
            let (key, value) = rest.split_once('|').unwrap_or((rest, ""));
            let k = format!("{prefix}{sec}|{key}");
            into.insert(k.clone(), value.to_string());
            last = Some(k);
        } else if let Some(k) = &last {
            let v = into.get_mut(k).unwrap();
            v.push('\n');
            v.push_str(line);
        }
    }
}

/// The fingerprint of a whole cluster: roles, memberships, databases and every database's
/// contents (keys of a database's contents start with `<database>/`).
fn fingerprint(container: &str, user: &str) -> BTreeMap<String, String> {
    let mut fp = BTreeMap::new();
    parse(
        &psql_script(container, user, "postgres", CLUSTER_SQL),
        "",
        &mut fp,
    );
    let dbs: Vec<String> = fp
        .keys()
        .filter_map(|k| k.strip_prefix("database|").map(String::from))
        .collect();
    for db in dbs {
        if db.starts_with("pgbackup_") {
            continue;
        }
        parse(
            &psql_script(container, user, &db, DATABASE_SQL),
            &format!("{db}/"),
            &mut fp,
        );
    }
    fp
}

/// What of `fp` concerns the databases in `dbs` (their properties and contents).
fn databases_of(fp: &BTreeMap<String, String>, dbs: &[&str]) -> BTreeMap<String, String> {
    fp.iter()
        .filter(|(k, _)| {
            dbs.iter()
                .any(|d| k.starts_with(&format!("{d}/")) || **k == format!("database|{d}"))
                || (k.starts_with("role-setting|")
                    && dbs.iter().any(|d| k.ends_with(&format!("@{d}"))))
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Roles, their settings (not per database) and memberships of `fp`.
fn roles_of(fp: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    fp.iter()
        .filter(|(k, _)| {
            k.starts_with("role|")
                || k.starts_with("membership|")
                || (k.starts_with("role-setting|") && k.ends_with("@*"))
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// A fingerprint as a newer major reads it: Postgres 17 added the MAINTAIN privilege (`m`,
/// implicit for owners) and prints view definitions differently. Only that is set aside when a
/// backup of 15 is compared with its restore into 17.
fn across_majors(fp: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    fp.iter()
        .map(|(k, v)| {
            let mut v = v.clone();
            if k.contains("relation|") {
                let mut parts: Vec<String> = v.split(',').map(String::from).collect();
                if parts.first().is_some_and(|kind| kind == "v" || kind == "m") {
                    parts.pop(); // the view definition's hash
                }
                v = parts.join(",");
            }
            // `role=arwdDxtm/grantor` → `role=arwdDxt/grantor`
            let v = v
                .split(' ')
                .map(|item| match (item.find('='), item.rfind('/')) {
                    (Some(eq), Some(slash)) if eq < slash => {
                        format!(
                            "{}{}{}",
                            &item[..=eq],
                            item[eq + 1..slash].replace('m', ""),
                            &item[slash..]
                        )
                    }
                    _ => item.to_string(),
                })
                .collect::<Vec<_>>()
                .join(" ");
            (k.clone(), v)
        })
        .collect()
}

/// The differences, one line each (empty when equal).
fn diff(want: &BTreeMap<String, String>, got: &BTreeMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in want {
        match got.get(k) {
            None => out.push(format!("missing  {k} = {v}")),
            Some(g) if g != v => out.push(format!("changed  {k}: {v} → {g}")),
            _ => {}
        }
    }
    for (k, v) in got {
        if !want.contains_key(k) {
            out.push(format!("extra    {k} = {v}"));
        }
    }
    out
}

/// Asserts that `restored` holds the source's databases exactly and every source role as it
/// was (the target may have roles of its own, e.g. another superuser).
fn assert_restored(
    source: &BTreeMap<String, String>,
    restored: &BTreeMap<String, String>,
    dbs: &[&str],
    what: &str,
) {
    let mut d = diff(&databases_of(source, dbs), &databases_of(restored, dbs));
    let src_roles = roles_of(source);
    let got_roles: BTreeMap<String, String> = roles_of(restored)
        .into_iter()
        .filter(|(k, _)| src_roles.contains_key(k))
        .collect();
    d.extend(diff(&src_roles, &got_roles));
    assert!(
        d.is_empty(),
        "{what}: the restore differs from the source:\n{}",
        d.join("\n")
    );
    // The fingerprint is not trivially small: it saw the fixture.
    assert!(
        source.keys().any(|k| k == "shop/rows|app.events")
            && source.keys().any(|k| k.starts_with("shop/large-object|")),
        "the source fingerprint misses the fixture: {:?}",
        source.keys().take(20).collect::<Vec<_>>()
    );
}

fn pgctl_ok(s: &Stack, args: &[&str]) -> String {
    let o = s.pgctl(args);
    assert!(
        o.status.success(),
        "pgctl {args:?} failed ({:?}): {}{}",
        o.status.code(),
        stdout(&o),
        stderr(&o)
    );
    format!("{}{}", stdout(&o), stderr(&o))
}

/// `pgctl backup --wait TARGET`; returns the backup id.
fn backup(s: &Stack, target: &str) -> String {
    let out = pgctl_ok(s, &["backup", "--wait", target]);
    out.split_whitespace()
        .nth(2)
        .expect("backup id in the output")
        .to_string()
}

const ALL: [&str; 4] = [ODD, "globals", "postgres", SHOP];

#[test]
fn pg17_exec_custom_restores_exactly_into_an_empty_server_with_another_superuser() {
    let s = stack!();
    let src = source(&s, "fid17", &common::postgres_image(), &[]);
    let _c = Cleanup(src.clone());
    let before = fingerprint(&src, "postgres");
    let id = backup(&s, &src);
    let m = s
        .list(&src)
        .into_iter()
        .find(|m| m["backup_id"] == id.as_str())
        .unwrap();
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
        .filter(|o| o["kind"] == "database")
        .last()
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

#[test]
fn pg15_connect_custom_and_plain_restore_into_pg15_and_exec_into_pg17() {
    let s = stack!();
    let pg15 = common::postgres15_image();
    for format in ["custom", "plain"] {
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
        pgctl_ok(&s, &["restore", &id, "--from", &src, "--to", &dst]);
        assert_restored(
            &before,
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
        pgctl_ok(&s, &["restore", &id, "--from", &src, "--to", &dst17]);
        assert_restored(
            &across_majors(&before),
            &across_majors(&fingerprint(&dst17, "postgres")),
            &ALL,
            &format!("PG15 connect {format} → PG17"),
        );
    }
}

#[test]
fn pg15_exec_custom_restores_exactly_into_pg17() {
    let s = stack!();
    let src = source(&s, "fid15exec", &common::postgres15_image(), &[]);
    let _c = Cleanup(src.clone());
    let before = fingerprint(&src, "postgres");
    let id = backup(&s, &src);
    let dst = unique("fid15exec-to17");
    let _d = Cleanup(dst.clone());
    start(&s, &dst, &common::postgres_image(), "postgres", false, &[]);
    pgctl_ok(&s, &["restore", &id, "--from", &src, "--to", &dst]);
    assert_restored(
        &across_majors(&before),
        &across_majors(&fingerprint(&dst, "postgres")),
        &ALL,
        "PG15 exec custom → PG17",
    );
}
