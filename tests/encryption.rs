//! End-to-end: age encryption (README "Encryption"). Kitchen-sink sources backed up by the
//! stack's sidecar in exec and connect mode with `pgbackup.age_recipients`, and a source backed
//! up by `pgctl run --once` on the host while PGBACKUP_AGE_RECIPIENTS changes (key rotation).
//! What lands in Garage is checked byte by byte: age files, not zstd, whose SHA-256 is the
//! manifest's. Restores run with the right identity, a wrong one and none; the identity must
//! never show in logs, status, metrics or any process's arguments.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::fixture::*;
use common::{Cleanup, Processes, docker, psql, stderr, stdout, unique};
use serde_json::Value;
use sha2::{Digest, Sha256};

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
const AGE_HEADER: &[u8] = b"age-encryption.org/v1\n";

/// A fresh age key pair: (identity file text, public key).
fn keypair() -> (String, String) {
    pgbackup::pipeline::crypt::generate()
}

/// A directory the sidecar sees at the same path (compose.test.yaml mounts the scratch root).
fn scratch_dir(prefix: &str) -> std::path::PathBuf {
    let root = std::env::var("PGBACKUP_E2E_SCRATCH")
        .unwrap_or_else(|_| "/tmp/pgbackup-e2e-scratch".into());
    let dir = std::path::PathBuf::from(root).join(unique(prefix));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `pgctl ARGS` in the stack's sidecar with `input` on its standard input (`--identity -`).
fn pgctl_stdin(s: &common::Stack, args: &[&str], input: &str) -> Output {
    let container = s.container("backup");
    let mut child = Command::new("docker")
        .args(["exec", "-i", &container, "pgctl"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Every stored object of a backup: an age file (never zstd), hashed as the manifest says, and
/// listed under its `.age` name in SHA256SUMS.
fn assert_opaque(s: &common::Stack, m: &Value, recipients: &[&str]) {
    let e = &m["encryption"];
    assert_eq!(e["method"], "age", "{m}");
    let want: Vec<Value> = recipients.iter().map(|r| Value::from(*r)).collect();
    assert_eq!(e["recipients"].as_array().unwrap(), &want, "{m}");
    let cfg = common::s3_config(s);
    let prefix = m["prefix"].as_str().unwrap();
    let sums = String::from_utf8(common::get(&cfg, &format!("{prefix}/SHA256SUMS"))).unwrap();
    let objects = m["objects"].as_array().unwrap();
    assert!(!objects.is_empty());
    for o in objects {
        let name = o["name"].as_str().unwrap();
        assert!(name.ends_with(".zst.age"), "{name}");
        let bytes = common::get(&cfg, &format!("{prefix}/{name}"));
        assert!(bytes.starts_with(AGE_HEADER), "{name} is not an age file");
        assert!(
            !bytes.windows(4).take(4096).any(|w| w == ZSTD_MAGIC),
            "{name} shows a zstd frame in the clear"
        );
        let sha = hex::encode(Sha256::digest(&bytes));
        assert_eq!(o["sha256"].as_str().unwrap(), sha, "{name}");
        assert!(sums.contains(&format!("{sha}  {name}\n")), "{sums}");
    }
}

/// The secret part of an identity, as it could leak.
fn secret_of(identity: &str) -> String {
    identity
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .unwrap()
        .to_string()
}

#[test]
fn encrypted_exec_and_connect_backups_are_opaque_and_restore_only_with_their_key() {
    let s = stack!();
    let started = chrono::Utc::now().to_rfc3339();
    let (identity, public) = keypair();
    let (other, other_public) = keypair();
    let dir = scratch_dir("enc");
    let key_file = dir.join("key.txt");
    std::fs::write(&key_file, &identity).unwrap();
    let wrong_file = dir.join("other.txt");
    std::fs::write(&wrong_file, &other).unwrap();
    let key_path = key_file.display().to_string();

    for (prefix, method) in [("encx", "exec"), ("encc", "connect")] {
        let src = source(
            &s,
            prefix,
            &common::postgres_image(),
            &[
                ("pgbackup.method", method),
                ("pgbackup.age_recipients", &public),
            ],
        );
        let _c = Cleanup(src.clone());
        let status = s.target(&src).unwrap();
        assert_eq!(
            status["settings"]["age_recipients"],
            serde_json::json!([public]),
            "{status}"
        );
        let before = fingerprint(&src, "postgres");
        let m = backup_manifest(&s, &src);
        assert_opaque(&s, &m, &[&public]);
        let list = stdout(&s.pgctl(&["list", &src]));
        assert!(
            list.contains("ENCRYPTED") && list.contains(" age"),
            "{list}"
        );
        let id = m["backup_id"].as_str().unwrap();

        // No identity, a wrong one: refused before anything changes (the source itself,
        // --clean, would be replaced).
        let o = s.pgctl(&["restore", id, "--from", &src, "--clean"]);
        assert_eq!(o.status.code(), Some(2), "{}{}", stdout(&o), stderr(&o));
        let e = stderr(&o);
        assert!(
            e.contains("is encrypted with age") && e.contains(&public),
            "{e}"
        );
        assert!(e.contains("--identity"), "{e}");
        let wrong = wrong_file.display().to_string();
        let o = s.pgctl(&[
            "restore",
            id,
            "--from",
            &src,
            "--clean",
            "--identity",
            &wrong,
        ]);
        assert_eq!(o.status.code(), Some(2), "{}{}", stdout(&o), stderr(&o));
        let e = stderr(&o);
        assert!(e.contains(&public) && e.contains(&other_public), "{e}");
        assert!(e.contains("nothing was changed"), "{e}");
        assert!(!e.contains("AGE-SECRET-KEY"), "{e}");
        assert_eq!(
            fingerprint(&src, "postgres"),
            before,
            "a refused restore changed {src}"
        );

        // With the identity on standard input, into an empty server; every process's
        // arguments are watched meanwhile.
        let dst = unique(&format!("{prefix}-to"));
        let _d = Cleanup(dst.clone());
        start(&s, &dst, &common::postgres_image(), "postgres", false, &[]);
        let empty = fingerprint(&dst, "postgres");
        let watch = Processes::watch(vec![s.container("backup"), dst.clone(), src.clone()]);
        let o = pgctl_stdin(
            &s,
            &[
                "restore",
                id,
                "--from",
                &src,
                "--to",
                &dst,
                "--identity",
                "-",
            ],
            &identity,
        );
        let seen = watch.stop();
        succeeded(&["restore", "--identity", "-"], o);
        assert!(
            seen.contains("pgctl restore"),
            "the restore was not seen: {seen}"
        );
        assert!(
            !seen.contains("AGE-SECRET-KEY"),
            "an identity in process arguments"
        );
        assert_restored_over(
            &before,
            &empty,
            &fingerprint(&dst, "postgres"),
            &["app", ODD, "globals", SHOP],
            &format!("encrypted {method} backup"),
        );

        // Verify: the stored bytes without the key, the content with it.
        let v = pgctl_ok(&s, &["verify", id, "--from", &src]);
        assert!(v.starts_with("ok "), "{v}");
        assert!(v.contains("content not decrypted"), "{v}");
        let v = pgctl_ok(&s, &["verify", id, "--from", &src, "--identity", &key_path]);
        assert!(v.contains("content decrypted and authenticated"), "{v}");
    }

    // Nothing secret anywhere the sidecar reports.
    let secret = secret_of(&identity);
    let logs = docker(&["logs", "--since", &started, &s.container("backup")]);
    let status = stdout(&s.pgctl(&["status", "--json"]));
    let metrics = s.metrics();
    for (what, text) in [("logs", &logs), ("status", &status), ("metrics", &metrics)] {
        assert!(
            !text.contains(&secret),
            "the identity is in the sidecar's {what}"
        );
        assert!(
            !text.contains("AGE-SECRET-KEY"),
            "an identity in the sidecar's {what}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `pgctl ARGS` on the host with the stack's S3 settings and `env`.
fn host(s: &common::Stack, args: &[&str], env: &[(&str, String)]) -> Output {
    common::host_pgctl_env(s, args, env)
}

fn host_ok(s: &common::Stack, args: &[&str], env: &[(&str, String)]) -> String {
    succeeded(args, host(s, args, env))
}

#[test]
fn keys_rotate_without_touching_old_backups_and_retention_verify_and_drills_work() {
    let s = stack!();
    let (a, a_public) = keypair();
    let (b, b_public) = keypair();
    let dir = scratch_dir("rot");
    let (a_file, b_file) = (dir.join("a.txt"), dir.join("b.txt"));
    std::fs::write(&a_file, &a).unwrap();
    std::fs::write(&b_file, &b).unwrap();
    let (a_file, b_file) = (a_file.display().to_string(), b_file.display().to_string());

    let t = unique("rot");
    let _c = Cleanup(t.clone());
    s.start_pg(
        &t,
        &[("pgbackup.enable", "true"), ("pgbackup.schedule", "off")],
    );
    let rows = || {
        psql(
            &t,
            "postgres",
            "postgres",
            "SELECT string_agg(v, ',' ORDER BY v) FROM t",
        )
    };
    psql(
        &t,
        "postgres",
        "postgres",
        "CREATE TABLE t (v text); INSERT INTO t VALUES ('one')",
    );
    // The sidecar's recipients change between runs: A, then A and B, then B.
    let recipients = |r: String| vec![("PGBACKUP_AGE_RECIPIENTS", r)];
    host_ok(&s, &["run", "--once", &t], &recipients(a_public.clone()));
    psql(&t, "postgres", "postgres", "INSERT INTO t VALUES ('two')");
    host_ok(
        &s,
        &["run", "--once", &t],
        &recipients(format!("{a_public},{b_public}")),
    );
    psql(&t, "postgres", "postgres", "INSERT INTO t VALUES ('three')");
    host_ok(&s, &["run", "--once", &t], &recipients(b_public.clone()));

    let list: Vec<Value> =
        serde_json::from_str(&host_ok(&s, &["list", &t, "--json"], &[])).unwrap();
    let ids: Vec<String> = list
        .iter()
        .filter(|m| m["kind"] == "logical")
        .map(|m| m["backup_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 3, "{list:?}");
    let expected: [&[&str]; 3] = [&[&a_public], &[&a_public, &b_public], &[&b_public]];
    for (m, want) in list.iter().zip(expected) {
        assert_opaque(&s, m, want);
    }

    let restore = |id: &str, key: &str| {
        host(
            &s,
            &["restore", id, "--from", &t, "--clean", "--identity", key],
            &[],
        )
    };
    let restore_ok =
        |id: &str, key: &str| succeeded(&["restore", id, "--identity", key], restore(id, key));
    // The first backup with only the new key: refused, naming the old one; nothing changed.
    let o = restore(&ids[0], &b_file);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains(&a_public), "{}", stderr(&o));
    assert_eq!(rows(), "one,three,two");
    // Each backup with its own key; the middle one with either.
    restore_ok(&ids[0], &a_file);
    assert_eq!(rows(), "one");
    restore_ok(&ids[2], &b_file);
    assert_eq!(rows(), "one,three,two");
    restore_ok(&ids[1], &b_file);
    assert_eq!(rows(), "one,two");
    // Both keys at once, from the variable: the old backup restores too.
    let both = vec![("PGBACKUP_AGE_IDENTITY", format!("{a}\n{b}"))];
    host_ok(&s, &["restore", &ids[0], "--from", &t, "--clean"], &both);
    assert_eq!(rows(), "one");

    // Verify without a key: every stored byte checked, content not decrypted; with B: the two
    // newer ones decrypted, the oldest said to be out of B's reach, none damaged.
    let verify = |id: &str, extra: &[&str]| -> Value {
        let mut args = vec!["verify", id, "--from", &t, "--json"];
        args.extend_from_slice(extra);
        let v: Vec<Value> = serde_json::from_str(&host_ok(&s, &args, &[])).unwrap();
        assert_eq!(v.len(), 1, "{v:?}");
        v[0].clone()
    };
    for id in &ids {
        let r = verify(id, &[]);
        assert!(
            r["ok"] == true && r["encrypted"] == true && r["decrypted"] == false,
            "{r}"
        );
        assert!(r["note"].as_str().unwrap().contains("no --identity"), "{r}");
    }
    let oldest = verify(&ids[0], &["--identity", &b_file]);
    assert_eq!(oldest["ok"], true, "{oldest}");
    assert_eq!(oldest["decrypted"], false, "{oldest}");
    assert!(
        oldest["note"].as_str().unwrap().contains(&a_public),
        "{oldest}"
    );
    for id in &ids[1..] {
        let r = verify(id, &["--identity", &b_file]);
        assert!(r["ok"] == true && r["decrypted"] == true, "{r}");
    }

    // Drills need the identity: without it the drill fails saying so; with
    // PGBACKUP_AGE_IDENTITY_FILE it passes, and the controller's log never shows the key.
    let mut bare = s.host_controller(&[("PGBACKUP_SCHEDULE", "off".into())]);
    bare.wait_lists(&t);
    let o = common::host_pgctl(&["drill", &t, "--controller", &bare.url]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    assert!(
        format!("{}{}", stdout(&o), stderr(&o)).contains("PGBACKUP_AGE_IDENTITY_FILE"),
        "{}{}",
        stdout(&o),
        stderr(&o)
    );
    bare.stop_and_log();
    let mut keyed = s.host_controller(&[
        ("PGBACKUP_SCHEDULE", "off".into()),
        ("PGBACKUP_AGE_IDENTITY_FILE", b_file.clone()),
    ]);
    keyed.wait_lists(&t);
    let o = common::host_pgctl(&["drill", &t, "--controller", &keyed.url]);
    let said = format!("{}{}", stdout(&o), stderr(&o));
    assert!(o.status.success() && said.contains("passed"), "{said}");
    let log = keyed.stop_and_log();
    assert!(
        !log.contains(&secret_of(&b)),
        "the identity is in the controller's log"
    );

    // Retention needs no key: keep the newest only.
    let keep = vec![("RETENTION_KEEP_LAST", "1".to_string())];
    host_ok(&s, &["prune", &t], &keep);
    let left: Vec<Value> =
        serde_json::from_str(&host_ok(&s, &["list", &t, "--json"], &[])).unwrap();
    let left: Vec<&str> = left
        .iter()
        .map(|m| m["backup_id"].as_str().unwrap())
        .collect();
    assert_eq!(left, [ids[2].as_str()]);
    let _ = std::fs::remove_dir_all(&dir);
}
