//! End-to-end: what a user's bad day does to the backups, on the real stack (issue "Reliability
//! and safety"): two writers of one target at once, a target pointed at another's folder, an
//! unreadable manifest before retention, a job ended by its timeout.

mod common;

use std::time::Duration;

use common::{Cleanup, psql, stderr, stdout, unique, wait_until};
use pgbackup::config::S3Config;
use serde_json::Value;

/// Every key under `dir/` in the stack's bucket.
fn keys_under(cfg: &S3Config, dir: &str) -> Vec<String> {
    common::keys(cfg, &format!("{dir}/"))
}

/// Open multipart uploads under `dir/`.
fn uploads_under(cfg: &S3Config, dir: &str) -> Vec<String> {
    common::uploads_under(cfg, &format!("{dir}/"))
}

/// Aborts a multipart upload this test opened, when dropped.
struct AbortOnDrop {
    cfg: S3Config,
    key: String,
    upload_id: String,
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        use pgbackup::store::Store;
        let _ = common::block_on(async {
            common::s3_store(&self.cfg)
                .await
                .abort(&self.key, &self.upload_id)
                .await
        });
    }
}

/// A standalone target with `labels` (and `pgbackup.enable`), listed by the sidecar.
fn target(s: &common::Stack, prefix: &str, labels: &[(&str, &str)]) -> (String, Cleanup) {
    let name = unique(prefix);
    let guard = Cleanup(name.clone());
    let mut all = vec![("pgbackup.enable", "true"), ("pgbackup.globals", "false")];
    all.extend_from_slice(labels);
    s.start_pg(&name, &all);
    wait_until(Duration::from_secs(15), || s.target(&name)).expect("listed");
    (name, guard)
}

fn folder_of(listed: &Value) -> String {
    listed["prefix"].as_str().expect("prefix").to_string()
}

#[test]
fn two_writers_of_one_target_at_once_commit_two_whole_backups() {
    let s = stack!();
    let (name, _g) = target(&s, "writers", &[]);
    psql(
        &name,
        "postgres",
        "postgres",
        "CREATE TABLE t AS SELECT g FROM generate_series(1, 50000) g",
    );
    // A second sidecar on the same bucket: pgctl run on the host, next to the stack's.
    let ctl = s.host_controller(&[]);
    ctl.wait_lists(&name);

    // Both start within the same second (the old ids had one-second precision).
    let url = ctl.url.clone();
    let n2 = name.clone();
    let other = std::thread::spawn(move || {
        common::host_pgctl(&["backup", "--wait", "--controller", &url, &n2])
    });
    let mine = s.pgctl(&["backup", "--wait", &name]);
    let other = other.join().unwrap();
    for o in [&mine, &other] {
        assert!(o.status.success(), "{}{}", stdout(o), stderr(o));
    }

    let listed = s.list(&name);
    assert_eq!(listed.len(), 2, "two committed backups: {listed:?}");
    let ids: Vec<&str> = listed
        .iter()
        .map(|m| m["backup_id"].as_str().unwrap())
        .collect();
    assert_ne!(ids[0], ids[1], "each writer has its own id and folder");
    for m in &listed {
        let o = s.pgctl(&["verify", &folder_of(m)]);
        assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
        assert!(stdout(&o).contains("ok"), "{}", stdout(&o));
    }
}

#[test]
fn a_prefix_naming_another_targets_folder_is_refused_and_retention_keeps_to_its_own() {
    let s = stack!();
    let (owner, _g1) = target(&s, "owner", &[("pgbackup.keep.last", "1")]);
    let (intruder, _g2) = target(&s, "intruder", &[("pgbackup.prefix", &owner)]);

    // The intruder is invalid, naming the folder's owner; nothing of it is backed up.
    let t = s.target(&intruder).unwrap();
    assert_eq!(t["state"], "invalid", "{t}");
    let e = &t["errors"][0];
    assert_eq!(e["label"], "pgbackup.prefix", "{t}");
    assert!(
        e["expected"].as_str().unwrap().contains(&owner),
        "the error names the owner: {t}"
    );
    let o = s.pgctl(&["backup", "--wait", &intruder]);
    assert!(!o.status.success(), "{}{}", stdout(&o), stderr(&o));

    // A writer elsewhere (another host's sidecar, an older pgbackup) that wrote into the
    // owner's folder anyway: its backup is newer than the owner's.
    let first = common::fixture::backup_manifest(&s, &owner);
    let cfg = common::s3_config(&s);
    let dir = folder_of(&first).rsplit_once('/').unwrap().0.to_string();
    let foreign_id = pgbackup::model::layout::BackupId::tagged(
        chrono::Utc::now() + chrono::Duration::hours(1),
        pgbackup::model::layout::Kind::Logical,
        0xabcdef,
    );
    let mut foreign = first.clone();
    foreign["target"] = "elsewhere/db".into();
    foreign["backup_id"] = foreign_id.to_string().into();
    for o in first["objects"].as_array().unwrap() {
        let name = o["name"].as_str().unwrap();
        let data = common::get(&cfg, &format!("{}/{name}", folder_of(&first)));
        common::put(&cfg, &format!("{dir}/{foreign_id}/{name}"), data);
    }
    common::put(
        &cfg,
        &format!("{dir}/{foreign_id}/manifest.json"),
        serde_json::to_vec(&foreign).unwrap(),
    );

    // `latest` of the owner is the owner's own backup, not the newer foreign one.
    let o = s.pgctl(&["verify", "latest", "--from", &owner, "--json"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains(first["backup_id"].as_str().unwrap()),
        "{}",
        stdout(&o)
    );
    assert!(
        !stdout(&o).contains(&foreign_id.to_string()),
        "{}",
        stdout(&o)
    );

    // The owner keeps backing up into its folder; with keep.last=1 its retention removes its own
    // older backup and leaves the foreign one alone (neither counted nor deleted).
    let second = common::fixture::backup_manifest(&s, &owner);
    let o = s.pgctl(&["prune", &owner]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("written by target elsewhere/db"),
        "{}",
        stdout(&o)
    );
    let keys = keys_under(&cfg, &dir);
    let has = |id: &str| {
        keys.iter()
            .any(|k| k.ends_with(&format!("{id}/manifest.json")))
    };
    assert!(has(second["backup_id"].as_str().unwrap()), "{keys:?}");
    assert!(!has(first["backup_id"].as_str().unwrap()), "{keys:?}");
    assert!(has(&foreign_id.to_string()), "{keys:?}");
}

#[test]
fn an_unreadable_manifest_is_never_counted_and_never_the_reason_to_delete() {
    let s = stack!();
    let (name, _g) = target(&s, "unreadable", &[("pgbackup.keep.last", "1")]);
    let older = common::fixture::backup_manifest(&s, &name);
    let newer = common::fixture::backup_manifest(&s, &name);
    let cfg = common::s3_config(&s);
    let dir = folder_of(&older).rsplit_once('/').unwrap().0.to_string();
    // The newest folder's manifest is damaged (a truncated upload by a broken tool, a bit flip).
    let bad_id = pgbackup::model::layout::BackupId::tagged(
        chrono::Utc::now() + chrono::Duration::hours(1),
        pgbackup::model::layout::Kind::Logical,
        0x123456,
    );
    common::put(
        &cfg,
        &format!("{dir}/{bad_id}/manifest.json"),
        b"{\"format_version\": 1, \"backup_id\": ".to_vec(),
    );

    // And what a running backup looks like from outside: a folder without a manifest and an open
    // multipart upload, both minutes old. Prune keeps them and says so, with their age.
    let young = pgbackup::model::layout::BackupId::tagged(
        chrono::Utc::now(),
        pgbackup::model::layout::Kind::Logical,
        0x654321,
    );
    common::put(&cfg, &format!("{dir}/{young}/app.dump.zst"), vec![1; 10]);
    let upload_key = format!("{dir}/{young}/big.dump.zst");
    let upload_id = common::block_on(async {
        common::s3_store(&cfg)
            .await
            .sdk()
            .create_multipart_upload()
            .bucket(&cfg.bucket)
            .key(&upload_key)
            .send()
            .await
    })
    .unwrap()
    .upload_id
    .unwrap();
    // Aborted when the test ends, however it ends: other tests check that no upload is left
    // open in the bucket.
    let _abort = AbortOnDrop {
        cfg: cfg.clone(),
        key: upload_key.clone(),
        upload_id,
    };

    let o = s.pgctl(&["prune", "--dry-run", &name]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let plan = stdout(&o);
    assert!(plan.contains("manifest unreadable"), "{plan}");
    assert!(plan.contains("uncommitted, 1 objects"), "{plan}");
    assert!(plan.contains("may be a backup still running"), "{plan}");
    assert!(plan.contains("open upload"), "{plan}");
    let o = s.pgctl(&["prune", &name]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(
        uploads_under(&cfg, &dir).contains(&upload_key),
        "a young upload is kept"
    );
    assert!(keys_under(&cfg, &dir).contains(&format!("{dir}/{young}/app.dump.zst")));

    let keys = keys_under(&cfg, &dir);
    let has = |id: &str| {
        keys.iter()
            .any(|k| k.ends_with(&format!("{id}/manifest.json")))
    };
    assert!(
        has(newer["backup_id"].as_str().unwrap()),
        "the newest good backup is kept: {keys:?}"
    );
    assert!(
        !has(older["backup_id"].as_str().unwrap()),
        "keep.last=1 over the good ones: {keys:?}"
    );
    assert!(
        has(&bad_id.to_string()),
        "the damaged one is reported, not deleted"
    );
    let o = s.pgctl(&["verify", &folder_of(&newer)]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
}

#[test]
fn a_job_ended_by_its_timeout_leaves_nothing_behind() {
    let s = stack!();
    let (name, _g) = target(
        &s,
        "timeout",
        &[("pgbackup.timeout", "3s"), ("pgbackup.compression", "none")],
    );
    psql(&name, "postgres", "postgres", common::BIG_TABLE);
    let started = std::time::Instant::now();
    let o = s.pgctl(&["backup", "--wait", &name]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("timeout of 3s"),
        "the failure names the timeout: {}",
        stdout(&o)
    );
    assert!(started.elapsed() < Duration::from_secs(60));

    let cfg = common::s3_config(&s);
    let dir = name.clone();
    // Nothing listed, no object and no open upload left in the target's folder.
    assert!(s.list(&name).is_empty());
    let clean = wait_until(Duration::from_secs(30), || {
        (keys_under(&cfg, &dir).is_empty() && uploads_under(&cfg, &dir).is_empty()).then_some(())
    });
    assert!(
        clean.is_some(),
        "left behind: {:?} {:?}",
        keys_under(&cfg, &dir),
        uploads_under(&cfg, &dir)
    );
}

#[test]
fn a_restore_killed_after_creating_roles_is_cleaned_up_by_the_next_one() {
    let s = stack!();
    let (src, _g1) = target(&s, "killsrc", &[("pgbackup.globals", "true")]);
    let role = format!("owner_{}", &src[src.len() - 6..]).replace('-', "_");
    psql(
        &src,
        "postgres",
        "postgres",
        &format!(
            "CREATE ROLE {role} LOGIN; CREATE TABLE owned (x int); ALTER TABLE owned OWNER TO {role}"
        ),
    );
    psql(&src, "postgres", "postgres", common::BIG_TABLE);
    let big = common::fixture::backup_manifest(&s, &src);
    let (dst, _g2) = target(&s, "killdst", &[("pgbackup.globals", "true")]);
    let own = common::fixture::backup_manifest(&s, &dst);

    // Killed (the pgctl process, on the host) once the roles are committed and the big table
    // is being loaded.
    let mut child = s
        .host_pgctl_cmd(&["restore", &folder_of(&big), "--to", &dst, "--clean"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let copying = wait_until(Duration::from_secs(60), || {
        let n = psql(
            &dst,
            "postgres",
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE datname LIKE 'pgbackup\\_restore\\_%' AND query ILIKE 'COPY public.big%'",
        );
        (n != "0").then_some(())
    });
    assert!(copying.is_some(), "the restore reached the big table");
    child.kill().unwrap();
    child.wait().unwrap();
    let q = format!(
        "SELECT count(*) FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole WHERE r.rolname = '{role}' AND array_to_string(s.setconfig, ',') LIKE 'pgbackup.restore_run=%'"
    );
    assert_eq!(
        psql(&dst, "postgres", "postgres", &q),
        "1",
        "the role the killed run created is marked with its run"
    );
    wait_until(Duration::from_secs(60), || {
        let n = psql(
            &dst,
            "postgres",
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pgbackup\\_restore\\_%'",
        );
        (n == "0").then_some(())
    })
    .expect("the killed run's sessions ended");

    // The next restore (any backup) names what the killed one left, and drops it first.
    let args = ["restore", &folder_of(&own), "--to", &dst, "--clean"];
    let plan = common::fixture::pgctl_ok(&s, &[&args[..], &["--dry-run"]].concat());
    assert!(plan.contains(&format!("cleanup    role {role}")), "{plan}");
    assert!(plan.contains("cleanup    pgbackup_restore_"), "{plan}");
    common::fixture::pgctl_ok(&s, &args);
    assert_eq!(
        psql(
            &dst,
            "postgres",
            "postgres",
            &format!("SELECT count(*) FROM pg_roles WHERE rolname = '{role}'")
        ),
        "0",
        "the interrupted run's role is gone"
    );
    assert_eq!(
        psql(
            &dst,
            "postgres",
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'pgbackup\\_%'"
        ),
        "0"
    );
}

#[test]
fn a_full_storage_fails_the_backup_saying_so_in_bounded_time() {
    let s = stack!();
    // A Garage of its own whose data directory is a 40 MiB tmpfs, set up like the stack's.
    let garage = unique("fullgarage");
    let _g = Cleanup(garage.clone());
    let image_of = |c: &str| common::docker(&["inspect", "-f", "{{.Config.Image}}", c]);
    let root = env!("CARGO_MANIFEST_DIR");
    common::docker(&[
        "run",
        "-d",
        "--name",
        &garage,
        "--label",
        &format!("pgbackup-e2e.owner={}", s.project),
        "--network",
        &s.network(),
        "--tmpfs",
        "/var/lib/garage/data:size=40m",
        "--tmpfs",
        "/var/lib/garage/meta:size=64m",
        "-v",
        &format!("{root}/garage/garage.toml:/etc/garage.toml:ro"),
        "-p",
        "127.0.0.1::3900",
        &image_of(&s.container("garage")),
        "/garage",
        "server",
    ]);
    let key = (
        "GK5a0696932d5415f414fe611f",
        "9ee5125902ef55aa4941e05962e260ee547efe45d9c1ad3e2c2dfcaccb976025",
    );
    common::docker(&[
        "run",
        "--rm",
        "--network",
        &s.network(),
        "-e",
        &format!("GARAGE_ADMIN_URL=http://{garage}:3903"),
        "-e",
        "GARAGE_ADMIN_TOKEN=pgbackup-local-admin-token",
        "-e",
        "S3_BUCKET=pgbackup",
        "-e",
        &format!("S3_ACCESS_KEY_ID={}", key.0),
        "-e",
        &format!("S3_SECRET_ACCESS_KEY={}", key.1),
        "-v",
        &format!("{root}/garage/init.sh:/garage-init.sh:ro"),
        "--entrypoint",
        "/bin/sh",
        &image_of(&s.container("backup")),
        "/garage-init.sh",
    ]);
    let port = common::docker(&["port", &garage, "3900"]);

    let (name, _t) = target(&s, "full", &[("pgbackup.compression", "none")]);
    psql(&name, "postgres", "postgres", common::BIG_TABLE);
    let ctl = s.host_controller(&[("S3_ENDPOINT", format!("http://{}", port.trim()))]);
    ctl.wait_lists(&name);

    let (tx, rx) = std::sync::mpsc::channel();
    let (url, n2) = (ctl.url.clone(), name.clone());
    std::thread::spawn(move || {
        let _ = tx.send(common::host_pgctl(&[
            "backup",
            "--wait",
            "--controller",
            &url,
            &n2,
        ]));
    });
    let o = rx
        .recv_timeout(Duration::from_secs(300))
        .expect("the backup ended within 5 minutes instead of hanging");
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    // Garage answers a full disk with a 503 naming ENOSPC ("refused the write for lack of
    // space") or, as here mostly, by never answering the write while it answers everything else
    // ("answers but did not accept the write … may be out of space").
    let out = stdout(&o);
    assert!(
        out.contains("refused the write for lack of space")
            || out.contains("answers but did not accept the write"),
        "the failure says the storage refused the write: {out}"
    );
}

#[test]
fn a_read_only_key_lists_verifies_and_restores_but_cannot_back_up() {
    let s = stack!();
    let (name, _g) = target(&s, "readonly", &[]);
    psql(
        &name,
        "postgres",
        "postgres",
        "CREATE TABLE t AS SELECT 1 AS x",
    );
    let m = common::fixture::backup_manifest(&s, &name);

    // A second Garage key with read rights only on the bucket (Garage's permissions are per
    // bucket: read, write, owner; the README's IAM policy splits the same way).
    let (id, secret) = (
        "GK0123456789abcdef01234567",
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    );
    let script = format!(
        r#"set -eu
api() {{ curl -sS -f -X "$1" -H "Authorization: Bearer pgbackup-local-admin-token" -H 'Content-Type: application/json' ${{3:+--data "$3"}} "http://garage:3903$2"; }}
api GET "/v2/GetKeyInfo?id={id}" >/dev/null 2>&1 || api POST /v2/ImportKey '{{"accessKeyId":"{id}","secretAccessKey":"{secret}","name":"read-only"}}' >/dev/null
b=$(api GET "/v2/GetBucketInfo?globalAlias=pgbackup" | jq -r .id)
api POST /v2/AllowBucketKey "{{\"bucketId\":\"$b\",\"accessKeyId\":\"{id}\",\"permissions\":{{\"read\":true,\"write\":false,\"owner\":false}}}}" >/dev/null
"#
    );
    let image = common::docker(&["inspect", "-f", "{{.Config.Image}}", &s.container("backup")]);
    common::docker(&[
        "run",
        "--rm",
        "--network",
        &s.network(),
        "--entrypoint",
        "sh",
        &image,
        "-c",
        &script,
    ]);
    let read_only = |args: &[&str]| {
        let mut c = s.host_pgctl_cmd(args);
        c.env("S3_ACCESS_KEY_ID", id)
            .env("S3_SECRET_ACCESS_KEY", secret)
            .env("PGBACKUP_HTTP_ADDR", "off");
        common::run(&mut c)
    };

    // Reading works: list, verify, restore.
    let o = read_only(&["list", &name]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains(m["backup_id"].as_str().unwrap()),
        "{}",
        stdout(&o)
    );
    let o = read_only(&["verify", &folder_of(&m)]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let o = read_only(&["restore", &folder_of(&m), "--to", &name, "--clean"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));

    // Writing is refused, with the reason and the key named (never its secret).
    let ctl = s.host_controller(&[
        ("S3_ACCESS_KEY_ID", id.to_string()),
        ("S3_SECRET_ACCESS_KEY", secret.to_string()),
    ]);
    ctl.wait_lists(&name);
    let o = common::host_pgctl(&["backup", "--wait", "--controller", &ctl.url, &name]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("refused access") && out.contains(id), "{out}");
    assert!(!out.contains(secret), "{out}");
    assert_eq!(s.list(&name).len(), 1, "nothing new committed");
}

#[test]
fn bad_input_gets_a_message_naming_the_value_and_what_to_do() {
    let s = stack!();
    let (name, _g) = target(&s, "messages", &[]);
    let m = common::fixture::backup_manifest(&s, &name);
    let folder = folder_of(&m);
    let usage = |args: &[&str], says: &str| {
        let o = s.pgctl(args);
        assert_eq!(
            o.status.code(),
            Some(2),
            "{args:?}: {}{}",
            stdout(&o),
            stderr(&o)
        );
        assert!(stderr(&o).contains(says), "{args:?}: {}", stderr(&o));
    };
    // Restores aimed at the wrong thing.
    for not_pg in ["backup", "garage"] {
        usage(
            &["restore", &folder, "--to", not_pg, "--clean"],
            "is not a Postgres container",
        );
    }
    usage(
        &[
            "restore",
            &format!("s3://other-bucket/{folder}"),
            "--to",
            &name,
        ],
        "S3_BUCKET",
    );
    // An object the backup does not hold is named as such (not verified as the whole backup,
    // not reported as a missing bucket).
    usage(
        &["verify", &format!("{folder}/nothing-here.dump.zst")],
        "has no object \"nothing-here.dump.zst\"",
    );

    // Configuration: refused at once with the variable named.
    let t = std::time::Instant::now();
    let mut c = s.host_pgctl_cmd(&["list"]);
    c.env("S3_ENDPOINT", "http://");
    let o = common::run(&mut c);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("S3_ENDPOINT"), "{}", stderr(&o));
    assert!(t.elapsed() < Duration::from_secs(5));
    // A wrong region or port names what to check, not a bare HTTP status.
    let mut c = s.host_pgctl_cmd(&["list"]);
    c.env("S3_REGION", "eu-west-9");
    let o = common::run(&mut c);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("check S3_REGION (now eu-west-9)"),
        "{}",
        stderr(&o)
    );
    let mut c = s.host_pgctl_cmd(&["list"]);
    c.env("S3_ENDPOINT", "http://127.0.0.1:1");
    let o = common::run(&mut c);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("cannot reach S3 at http://127.0.0.1:1"),
        "{}",
        stderr(&o)
    );
    let mut c = s.host_pgctl_cmd(&["run"]);
    c.env("PGBACKUP_LOG", "info,pgbackup=loud");
    let o = common::run(&mut c);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("PGBACKUP_LOG"), "{}", stderr(&o));

    // A manifest far larger than any pgbackup writes is refused, not read into memory.
    let cfg = common::s3_config(&s);
    let dir = folder.rsplit_once('/').unwrap().0.to_string();
    let huge_id = pgbackup::model::layout::BackupId::tagged(
        chrono::Utc::now() + chrono::Duration::hours(2),
        pgbackup::model::layout::Kind::Logical,
        0x777777,
    );
    common::put(
        &cfg,
        &format!("{dir}/{huge_id}/manifest.json"),
        vec![b' '; 17 << 20],
    );
    let o = s.pgctl(&["verify", &format!("{dir}/{huge_id}")]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("more than any manifest pgbackup writes"),
        "{}{}",
        stdout(&o),
        stderr(&o)
    );
}

#[test]
fn labels_that_almost_opt_in_are_named_in_status() {
    let s = stack!();
    let name = unique("typo");
    let _g = Cleanup(name.clone());
    s.start_container(&name, &[("pgbackup.enabled", "true")]);
    let seen = wait_until(Duration::from_secs(45), || {
        let o = s.pgctl(&["status"]);
        let out = stdout(&o);
        out.contains(&format!("container {name} has pgbackup.enabled"))
            .then_some(out)
    });
    assert!(seen.is_some(), "status names the near miss");
    assert!(s.target(&name).is_none(), "and it is not a target");
}
