//! End-to-end: backups on a local directory instead of S3, with the README's `backup` service
//! ("Backups on a local directory") as written, in a compose project of its own: backup, list, verify, `sha256sum -c` with
//! standard tools, restore, retention; a sidecar killed mid-write leaves nothing listed and
//! nothing under a final name, and the next prune removes what it left once it is old.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{psql, stderr, stdout, wait_until};
use serde_json::Value;

fn ok(o: &std::process::Output) -> String {
    assert!(o.status.success(), "{}{}", stdout(o), stderr(o));
    stdout(o)
}

/// Every file under `dir`, relative, sorted.
fn files(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = vec![];
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn ids(p: &common::Project) -> Vec<String> {
    let v: Vec<Value> = serde_json::from_str(&ok(&p.pgctl(&["list", "--json"]))).unwrap();
    v.iter()
        .map(|m| m["backup_id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn backups_on_a_local_directory_list_verify_restore_and_prune_and_a_kill_leaves_nothing_listed() {
    let s = stack!();
    let readme = common::readme_blocks("Backups on a local directory", "yaml");
    let service = readme[0].replace(
        "image: pgbackup:local",
        &format!("image: {}", s.sidecar_image()),
    );
    assert!(
        service.contains("PGBACKUP_DESTINATION: /backups"),
        "{service}"
    );
    let p = common::Project::new(
        "local",
        &format!(
            r#"services:
  db:
    image: {pg}
    environment:
      POSTGRES_USER: app
      POSTGRES_PASSWORD: local-password
      POSTGRES_DB: app
    labels:
      pgbackup.enable: "true"
      pgbackup.schedule: "@daily"
      pgbackup.keep.last: "1"
    healthcheck:
      test: ["CMD-SHELL", "pg_isready -q -h 127.0.0.1"]
      interval: 2s
      retries: 60
{service}"#,
            pg = common::postgres_image(),
        ),
    );
    let root: PathBuf = p.dir.join("backups");
    std::fs::create_dir_all(&root).unwrap();
    ok(&p.compose(&["up", "-d", "--wait"]));
    let db = p.container("db");
    let target = format!("{}/db", p.project);
    let listed = wait_until(Duration::from_secs(30), || {
        let o = p.pgctl(&["status", "--json"]);
        let v: Value = serde_json::from_slice(&o.stdout).ok()?;
        v["targets"]
            .as_array()?
            .iter()
            .any(|t| t["target"] == target)
            .then_some(())
    });
    assert!(listed.is_some(), "the sidecar lists {target}");
    psql(
        &db,
        "app",
        "app",
        "CREATE ROLE reader LOGIN; CREATE TABLE t (v text); INSERT INTO t VALUES ('at-backup'); GRANT SELECT ON t TO reader;",
    );

    // Backup: the files are on the host, under the same layout as in a bucket.
    ok(&p.pgctl(&["backup", &target]));
    let first = ids(&p);
    assert_eq!(first.len(), 1, "{first:?}");
    let folder = root.join(&target).join(&first[0]);
    let names = files(&folder);
    assert!(
        names.contains(&"manifest.json".to_string())
            && names.contains(&"SHA256SUMS".to_string())
            && names.iter().any(|n| n.starts_with("app.")),
        "{names:?}"
    );
    // Standard tools check it where it lies.
    let sums = common::run(
        std::process::Command::new("sha256sum")
            .args(["-c", "SHA256SUMS"])
            .current_dir(&folder),
    );
    assert!(sums.status.success(), "{}{}", stdout(&sums), stderr(&sums));
    assert!(ok(&p.pgctl(&["verify", "latest", "--from", &target])).starts_with("ok"));

    // Restore: the data at backup time comes back, with its grants.
    psql(
        &db,
        "app",
        "app",
        "DELETE FROM t; INSERT INTO t VALUES ('after')",
    );
    ok(&p.pgctl(&["restore", "latest", "--to", "db", "--clean"]));
    assert_eq!(psql(&db, "app", "app", "SELECT v FROM t"), "at-backup");
    assert_eq!(
        psql(
            &db,
            "app",
            "app",
            "SELECT has_table_privilege('reader', 't', 'SELECT')"
        ),
        "t"
    );

    // Killed mid-write: the sidecar dies (SIGKILL) while a dump streams to disk.
    psql(&db, "app", "app", common::BIG_TABLE);
    let mut running = std::process::Command::new("docker")
        .args(["exec", &p.container("backup"), "pgctl", "backup", &target])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The database's dump, not the roles before it: the roles object is complete by then,
    // so the killed backup leaves an uncommitted folder holding one whole object (a leftover).
    let writing = wait_until(Duration::from_secs(60), || {
        files(&root)
            .into_iter()
            .find(|f| f.contains("/app.dump.zst.pgbackup-tmp-"))
    })
    .expect("the database's dump is being written");
    common::docker(&["kill", &p.container("backup")]);
    let _ = running.wait();
    let left = files(&root);
    let new_folder = Path::new(&writing).parent().unwrap().to_path_buf();
    let partial = writing.split(".pgbackup-tmp-").next().unwrap();
    assert!(
        !left.iter().any(|f| f == partial),
        "the dump cut off half-way is only under its temporary name: {left:?}"
    );
    ok(&p.compose(&["up", "-d", "--wait", "backup"]));
    assert_eq!(ids(&p), first, "the killed backup is not listed");
    // Prune sees the temporary file as a write still open, and keeps it while it is young.
    let plan = ok(&p.pgctl(&["prune", "--dry-run", &target]));
    assert!(plan.contains("open upload"), "{plan}");

    // Once it is old, prune removes it with what else the killed backup wrote, and
    // keep.last=1 the first backup (retention runs after scheduled backups by itself; this
    // one is manual).
    for f in files(&root.join(&new_folder)) {
        let path = root.join(&new_folder).join(f);
        let o = common::run(std::process::Command::new("touch").args([
            "-d",
            "3 days ago",
            &path.display().to_string(),
        ]));
        assert!(o.status.success(), "{}", stderr(&o));
    }
    ok(&p.pgctl(&["backup", &target]));
    let pruned = ok(&p.pgctl(&["prune", &target]));
    assert!(
        pruned.contains("deleted 1 backups and 1 leftovers, aborted 1 uploads"),
        "{pruned}"
    );
    let now = ids(&p);
    assert_eq!(now.len(), 1, "{now:?}");
    assert_ne!(now, first);
    assert!(!folder.exists(), "the first backup's folder is gone");
    let left = files(&root);
    assert!(
        !left.iter().any(|f| f.contains(".pgbackup-tmp-")),
        "the stale temporary file is gone: {left:?}"
    );
    assert!(
        left.iter()
            .all(|f| f.starts_with(&format!("{target}/{}", now[0]))),
        "only the kept backup remains: {left:?}"
    );
    assert!(ok(&p.pgctl(&["verify", "latest", "--from", &target])).starts_with("ok"));
}
