//! The kitchen-sink fixture (tests/fixtures/kitchen-sink) and the fingerprint that restore
//! fidelity tests compare (tests/fixtures/fingerprint-*.sql).

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{Stack, stderr, stdout, unique, wait_until};

pub const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/kitchen-sink");
const CLUSTER_SQL: &str = include_str!("../fixtures/fingerprint-cluster.sql");
const DATABASE_SQL: &str = include_str!("../fixtures/fingerprint-database.sql");
pub const SHOP: &str = "shop";
pub const ODD: &str = "Reporting \"Q4\" / données ✓";

/// A Postgres started from `image` on the stack's network with `labels`; when `fixture`, the
/// kitchen sink is created by its init scripts. Ready for queries when this returns.
pub fn start(
    s: &Stack,
    name: &str,
    image: &str,
    user: &str,
    fixture: bool,
    labels: &[(&str, &str)],
) {
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
    let ready = || super::pg_ready(name).then_some(());
    assert!(
        wait_until(Duration::from_secs(300), ready).is_some(),
        "{name} did not become ready: {}",
        super::docker(&["logs", "--tail", "30", name])
    );
    std::thread::sleep(Duration::from_secs(1));
    wait_until(Duration::from_secs(30), ready).expect("ready again");
}

/// A labelled kitchen-sink source (superuser `postgres`), discovered by the sidecar.
pub fn source(s: &Stack, prefix: &str, image: &str, labels: &[(&str, &str)]) -> String {
    source_as(s, prefix, image, "postgres", labels)
}

/// [`source`] whose superuser is `user`.
pub fn source_as(
    s: &Stack,
    prefix: &str,
    image: &str,
    user: &str,
    labels: &[(&str, &str)],
) -> String {
    let name = unique(prefix);
    let mut all = vec![("pgbackup.enable", "true"), ("pgbackup.schedule", "off")];
    all.extend_from_slice(labels);
    start(s, &name, image, user, true, &all);
    wait_until(Duration::from_secs(20), || s.target(&name)).expect("the source is discovered");
    name
}

/// Creates the kitchen sink in a running, empty server (superuser `postgres`) with psql, the
/// way its init scripts would.
pub fn load_fixture(container: &str) {
    let mut files: Vec<_> = std::fs::read_dir(FIXTURE)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    for f in files {
        psql_script(
            container,
            "postgres",
            "postgres",
            &std::fs::read_to_string(f).unwrap(),
        );
    }
}

/// `psql -XAt` with `sql` on stdin; every output line.
pub fn psql_script(container: &str, user: &str, db: &str, sql: &str) -> String {
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
pub fn parse(out: &str, prefix: &str, into: &mut BTreeMap<String, String>) {
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
pub fn fingerprint(container: &str, user: &str) -> BTreeMap<String, String> {
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
pub fn databases_of(fp: &BTreeMap<String, String>, dbs: &[&str]) -> BTreeMap<String, String> {
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
pub fn roles_of(fp: &BTreeMap<String, String>) -> BTreeMap<String, String> {
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
/// implicit for owners) and prints view definitions differently; since 16 a membership's grantor
/// must hold ADMIN OPTION, which 15's CREATEROLE roles never needed, so 15's `GRANTED BY admin`
/// is granted by the superuser on 17; 18 records a column's NOT NULL as a constraint too (the
/// column's own `attnotnull` is still compared); and `CREATE EXTENSION` installs the new
/// server's version of an extension, with that version's member objects. Only that is set aside
/// when a backup of one major is compared with its restore into a newer one.
pub fn across_majors(fp: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    fp.iter()
        .filter(|(k, v)| {
            let not_null = k.contains("/constraint|") && v.starts_with("NOT NULL ");
            !not_null && !v.starts_with("(extension)")
        })
        .map(|(k, v)| {
            if k.contains("/extension|") {
                let schema = v.split_once(',').map_or("", |(_, s)| s);
                return (k.clone(), format!("*,{schema}"));
            }
            let mut v = v.clone();
            if k.starts_with("membership|") {
                v = v
                    .split_once(',')
                    .map(|(_, rest)| format!("*,{rest}"))
                    .unwrap_or(v);
            }
            if k.contains("relation|") {
                let mut parts: Vec<String> = v.split(',').map(String::from).collect();
                if parts.first().is_some_and(|kind| kind == "v" || kind == "m") {
                    parts.pop(); // the view definition's hash
                }
                v = parts.join(",");
            }
            if k.starts_with("role") {
                return (k.clone(), v);
            }
            // ACL items: `role=arwdDxtm/grantor` → `role=arwdDxt/grantor`
            let privileges = |p: &str| p.chars().all(|c| "arwdDxtXUCTcsAm*".contains(c));
            let v = v
                .split(' ')
                .map(|item| match (item.rfind('='), item.rfind('/')) {
                    (Some(eq), Some(slash)) if eq < slash && privileges(&item[eq + 1..slash]) => {
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
pub fn diff(want: &BTreeMap<String, String>, got: &BTreeMap<String, String>) -> Vec<String> {
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
pub fn assert_restored(
    source: &BTreeMap<String, String>,
    restored: &BTreeMap<String, String>,
    dbs: &[&str],
    what: &str,
) {
    assert_restored_over(source, &BTreeMap::new(), restored, dbs, what)
}

/// Like [`assert_restored`] for a target that had roles before (`target_before`, its
/// fingerprint then): those keep their own attributes and passwords, as documented; every
/// other role, setting and membership of the source must be there as in the source.
pub fn assert_restored_over(
    source: &BTreeMap<String, String>,
    target_before: &BTreeMap<String, String>,
    restored: &BTreeMap<String, String>,
    dbs: &[&str],
    what: &str,
) {
    let mut d = diff(&databases_of(source, dbs), &databases_of(restored, dbs));
    let mut want = roles_of(source);
    for (k, v) in roles_of(target_before) {
        if (k.starts_with("role|") || k.starts_with("role-setting|")) && want.contains_key(&k) {
            want.insert(k, v);
        }
    }
    let got: BTreeMap<String, String> = roles_of(restored)
        .into_iter()
        .filter(|(k, _)| want.contains_key(k))
        .collect();
    d.extend(diff(&want, &got));
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

pub fn pgctl_ok(s: &Stack, args: &[&str]) -> String {
    succeeded(args, s.pgctl(args))
}

/// The output of a `pgctl ARGS` that must have succeeded (stdout then stderr).
pub fn succeeded(args: &[&str], o: std::process::Output) -> String {
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
pub fn backup(s: &Stack, target: &str) -> String {
    let out = pgctl_ok(s, &["backup", "--wait", target]);
    out.split_whitespace()
        .nth(2)
        .expect("backup id in the output")
        .to_string()
}

/// `pgctl backup --wait TARGET`; the new backup's manifest as `pgctl list --json` shows it.
pub fn backup_manifest(s: &Stack, target: &str) -> serde_json::Value {
    let id = backup(s, target);
    s.list(target)
        .into_iter()
        .find(|m| m["backup_id"] == id.as_str())
        .unwrap_or_else(|| panic!("backup {id} of {target} is not listed"))
}

/// `bash -euo pipefail -c SCRIPT` in `dir`, with the aws CLI on PATH and the stack's Garage as
/// its S3 (`AWS_*`), as a user runs the README's recipes.
pub fn aws_sh(s: &Stack, dir: &std::path::Path, script: &str) -> std::process::Output {
    let garage = super::garage_port(s);
    let aws_bin = std::env::var("PGBACKUP_E2E_AWS_BIN").expect(
        "PGBACKUP_E2E_AWS_BIN names the directory of the aws CLI (scripts/test.sh sets it)",
    );
    super::run(
        Command::new("bash")
            .args(["-euo", "pipefail", "-c", script])
            .current_dir(dir)
            .env(
                "PATH",
                format!("{aws_bin}:{}", std::env::var("PATH").unwrap_or_default()),
            )
            .env("AWS_ACCESS_KEY_ID", "GK5a0696932d5415f414fe611f")
            .env(
                "AWS_SECRET_ACCESS_KEY",
                "9ee5125902ef55aa4941e05962e260ee547efe45d9c1ad3e2c2dfcaccb976025",
            )
            .env("AWS_DEFAULT_REGION", "garage")
            .env("AWS_ENDPOINT_URL", format!("http://{}", garage.trim())),
    )
}

/// Every database of the fixture.
pub const ALL: [&str; 4] = [ODD, "globals", "postgres", SHOP];
