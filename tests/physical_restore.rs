//! End-to-end: physical restore into a new volume with the compose file rewritten. A scratch
//! compose project (one labelled Postgres 17 with a named volume) is brought up with the compose
//! CLI in a directory the sidecar sees at the same path; backups and restores run inside the
//! stack's sidecar (`docker exec … pgctl`), exactly as users run them.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use common::{Stack, docker, psql, run, stderr, stdout, wait_until};

const COMPOSE: &str = "# Scratch stack of the physical-restore test.
name: PROJECT
services:
  # The database under test.
  pg:
    image: IMAGE   # same image as the stack
    environment:
      POSTGRES_USER: app
      POSTGRES_PASSWORD: scratch-password
      POSTGRES_DB: app
    volumes:
      - pgdata:/var/lib/postgresql/data   # the data
    healthcheck:
      test: [\"CMD-SHELL\", \"pg_isready -q -U app -d app -h 127.0.0.1\"]
      interval: 1s
      timeout: 5s
      retries: 60
    labels:
      pgbackup.enable: \"true\"
      pgbackup.schedule: \"off\"
      pgbackup-e2e.owner: OWNER

volumes:
  # Named volume: the restore switches it.
  pgdata:
";

/// A compose project in the scratch directory; `down -v` and its volumes removed when dropped.
struct Scratch {
    project: String,
    dir: PathBuf,
    file: PathBuf,
}

impl Scratch {
    fn new(stack: &Stack) -> Scratch {
        Scratch::with_labels(stack, &[])
    }

    /// A scratch stack whose `pg` service has `labels` besides the usual ones.
    fn with_labels(stack: &Stack, labels: &[(&str, &str)]) -> Scratch {
        let root = std::env::var("PGBACKUP_E2E_SCRATCH")
            .unwrap_or_else(|_| "/tmp/pgbackup-e2e-scratch".into());
        let project = common::unique(&format!("{}-swap", stack.project));
        let dir = PathBuf::from(root).join(&project);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("compose.yaml");
        let extra: String = labels
            .iter()
            .map(|(k, v)| format!("      {k}: \"{v}\"\n"))
            .collect();
        let text = COMPOSE
            .replace("PROJECT", &project)
            .replace("IMAGE", &common::postgres_image())
            .replace(
                "OWNER",
                &if extra.is_empty() {
                    stack.project.clone()
                } else {
                    format!("{}\n{}", stack.project, extra.trim_end())
                },
            );
        std::fs::write(&file, text).unwrap();
        let s = Scratch { project, dir, file };
        let o = s.compose(&["up", "-d", "--wait"]);
        assert!(o.status.success(), "compose up: {}", stderr(&o));
        s
    }

    fn compose(&self, args: &[&str]) -> Output {
        let file = self.file.display().to_string();
        let mut full = vec!["compose", "-p", &self.project, "-f", &file];
        full.extend_from_slice(args);
        run(Command::new("docker").args(&full))
    }

    fn container(&self) -> String {
        format!("{}-pg-1", self.project)
    }

    fn target(&self) -> String {
        format!("{}/pg", self.project)
    }

    fn sql(&self, q: &str) -> String {
        psql(&self.container(), "app", "app", q)
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.file).unwrap()
    }

    fn volumes(&self) -> Vec<String> {
        docker(&["volume", "ls", "-q"])
            .lines()
            .filter(|v| v.starts_with(&format!("{}_", self.project)))
            .map(String::from)
            .collect()
    }

    fn container_id(&self) -> String {
        docker(&["inspect", "-f", "{{.Id}}", &self.container()])
    }

    fn data_volume(&self) -> String {
        docker(&[
            "inspect",
            "-f",
            "{{range .Mounts}}{{if eq .Destination \"/var/lib/postgresql/data\"}}{{.Name}}{{end}}{{end}}",
            &self.container(),
        ])
    }

    fn healthy(&self) -> bool {
        docker(&[
            "inspect",
            "-f",
            "{{.State.Health.Status}}",
            &self.container(),
        ]) == "healthy"
    }

    fn wait_healthy(&self) {
        wait_until(Duration::from_secs(60), || self.healthy().then_some(()))
            .unwrap_or_else(|| panic!("{} did not become healthy", self.container()));
    }

    fn leftovers(&self) -> String {
        docker(&[
            "ps",
            "-a",
            "--format",
            "{{.Names}}",
            "--filter",
            &format!("name={}", self.project),
        ])
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = self.compose(&["down", "-v", "--remove-orphans"]);
        for c in self.leftovers().lines() {
            let _ = Command::new("docker").args(["rm", "-f", c]).output();
        }
        for v in self.volumes() {
            let _ = Command::new("docker")
                .args(["volume", "rm", "-f", &v])
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\n{}{}",
        o.status.code(),
        stdout(o),
        stderr(o)
    );
    format!("{}{}", stdout(o), stderr(o))
}

fn backup(stack: &Stack, target: &str) -> String {
    wait_until(Duration::from_secs(20), || stack.target(target)).expect("target discovered");
    ok(&stack.pgctl(&["backup", "--physical", "--wait", target]));
    stack
        .list(target)
        .into_iter()
        .filter(|m| m["kind"] == "physical")
        .map(|m| m["prefix"].as_str().unwrap().to_string())
        .next_back()
        .expect("a physical backup is listed")
}

const ROWS: &str = "SELECT string_agg(v, ',' ORDER BY v) FROM t";

#[test]
fn physical_restore_switches_the_service_onto_a_new_volume() {
    let stack = stack!();
    let s = Scratch::new(&stack);
    let original = s.text();
    let old_volume = format!("{}_pgdata", s.project);
    assert_eq!(s.data_volume(), old_volume);

    s.sql("CREATE TABLE t (v text); INSERT INTO t VALUES ('at-backup'); CREATE TABLE gone (x int); INSERT INTO gone VALUES (1)");
    let first = backup(&stack, &s.target());
    // Changed and dropped after the backup.
    s.sql("INSERT INTO t VALUES ('after-backup'); DROP TABLE gone");

    // Misuse and dry run change nothing.
    let o = stack.pgctl(&[
        "restore",
        "latest",
        "--physical",
        "--to",
        &s.target(),
        "--in-place",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--yes"), "{}", stderr(&o));
    let o = stack.pgctl(&["restore", "latest", "--standby", "--to", &s.target()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("add --physical"), "{}", stderr(&o));
    let id_before = s.container_id();
    let dry = ok(&stack.pgctl(&[
        "restore",
        "latest",
        "--physical",
        "--to",
        &s.target(),
        "--dry-run",
    ]));
    for says in [
        "Physical restore",
        "new volume",
        "+ pgdata-restored-",
        "dry run: nothing was changed",
    ] {
        assert!(dry.contains(says), "{says:?} in\n{dry}");
    }
    assert_eq!(s.container_id(), id_before);
    assert_eq!(s.text(), original);
    assert_eq!(s.volumes(), vec![old_volume.clone()]);

    // The restore, with a post-restore script.
    let scripts = s.dir.join("post-sql");
    std::fs::create_dir_all(&scripts).unwrap();
    std::fs::write(
        scripts.join("10-mark.sql"),
        "INSERT INTO t VALUES ('post-sql');\n",
    )
    .unwrap();
    let out = ok(&stack.pgctl(&[
        "restore",
        "latest",
        "--physical",
        "--to",
        &s.target(),
        "--post-sql",
        &scripts.display().to_string(),
    ]));
    assert!(
        out.contains(&format!("previous volume {old_volume} is kept")),
        "{out}"
    );
    assert!(s.healthy(), "healthy right after the restore");
    assert_eq!(s.sql(ROWS), "at-backup,post-sql");
    assert_eq!(
        s.sql("SELECT count(*) FROM gone"),
        "1",
        "dropped table is back"
    );
    let new_volume = s.data_volume();
    assert!(
        new_volume.starts_with(&format!("{}_pgdata-restored-", s.project)),
        "{new_volume}"
    );
    assert_ne!(s.container_id(), id_before, "container recreated");
    assert!(
        !s.leftovers().contains("pgbackup-replaced"),
        "old container removed"
    );

    // The compose file: only the volume reference changed, comments intact, .bak kept.
    let edited = s.text();
    let key = new_volume.trim_start_matches(&format!("{}_", s.project));
    let removed: Vec<&str> = original
        .lines()
        .filter(|l| !edited.lines().any(|e| e == *l))
        .collect();
    let added: Vec<&str> = edited
        .lines()
        .filter(|l| !original.lines().any(|e| e == *l))
        .collect();
    assert_eq!(
        removed,
        ["      - pgdata:/var/lib/postgresql/data   # the data"]
    );
    assert_eq!(
        added,
        [
            format!("      - {key}:/var/lib/postgresql/data   # the data"),
            format!("  {key}: null"),
        ]
    );
    let bak = std::fs::read_to_string(s.dir.join("compose.yaml.bak")).unwrap();
    assert_eq!(bak, original);

    // `docker compose up -d` keeps the restored data.
    ok(&s.compose(&["up", "-d", "--wait"]));
    assert_eq!(s.data_volume(), new_volume);
    assert_eq!(s.sql(ROWS), "at-backup,post-sql");

    // The old volume still holds the newer data.
    let probe = format!("{}-old", s.project);
    let _c = common::Cleanup(probe.clone());
    stack.start_image(
        &probe,
        &common::postgres_image(),
        &[],
        &["-v", &format!("{old_volume}:/var/lib/postgresql/data")],
    );
    common::wait_ready(&probe);
    assert_eq!(psql(&probe, "app", "app", ROWS), "after-backup,at-backup");
    drop(_c);

    // A corrupt backup: the service never stops, nothing changes.
    let second = backup(&stack, &s.target());
    assert_ne!(second, first);
    s.sql("INSERT INTO t VALUES ('after-second')");
    let cfg = common::s3_config(&stack);
    let key_obj = format!("{second}/base.tar.zst");
    let mut bytes = common::get(&cfg, &key_obj);
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    common::put(&cfg, &key_obj, bytes);
    let id = s.container_id();
    let volumes = s.volumes();
    let o = stack.pgctl(&["restore", &second, "--physical"]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    assert!(stderr(&o).contains("Rolled back"), "{}", stderr(&o));
    assert_eq!(s.container_id(), id, "same container");
    assert_eq!(s.sql(ROWS), "after-second,at-backup,post-sql");
    assert_eq!(s.text(), edited, "compose file unchanged");
    assert_eq!(s.volumes(), volumes, "no new volume left");

    // A start-up failure (a setting Postgres refuses): back on the old volume.
    let conf = s.dir.join("bad.auto.conf");
    std::fs::write(&conf, "shared_buffers = 'plenty'\n").unwrap();
    let o = stack.pgctl(&[
        "restore",
        &first,
        "--physical",
        "--auto-conf",
        &conf.display().to_string(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("stopped") && err.contains("Rolled back"),
        "{err}"
    );
    s.wait_healthy();
    assert_eq!(s.container_id(), id, "the old container is back");
    assert_eq!(s.data_volume(), new_volume);
    assert_eq!(s.sql(ROWS), "after-second,at-backup,post-sql");
    assert_eq!(s.text(), edited, "compose file unchanged");
    assert_eq!(s.volumes(), volumes, "no new volume left");
    assert!(
        !s.leftovers().contains("pgbackup-replaced"),
        "{}",
        s.leftovers()
    );
}

#[test]
fn physical_backup_of_postgres_15_is_refused_for_postgres_17() {
    let stack = stack!();
    let s = Scratch::new(&stack);
    let db15 = format!("{}/db15", stack.project);
    let prefix = backup(&stack, &db15);
    let before = (s.container_id(), s.text(), s.volumes());
    let o = stack.pgctl(&["restore", &prefix, "--physical", "--to", &s.target()]);
    assert_eq!(o.status.code(), Some(4), "{}{}", stdout(&o), stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("Postgres 15 cluster") && err.contains("runs Postgres 17"),
        "{err}"
    );
    assert_eq!((s.container_id(), s.text(), s.volumes()), before);
}

#[test]
fn in_place_restore_and_standby_with_auto_conf() {
    let stack = stack!();
    let s = Scratch::new(&stack);
    s.sql("CREATE TABLE t (v text); INSERT INTO t VALUES ('at-backup')");
    let b = backup(&stack, &s.target());
    s.sql("INSERT INTO t VALUES ('after-backup')");
    let original = s.text();
    let volume = s.data_volume();

    // In place: the same volume refilled, the compose file untouched.
    let out = ok(&stack.pgctl(&["restore", &b, "--physical", "--in-place", "--yes"]));
    assert!(out.contains("IN PLACE"), "{out}");
    assert!(s.healthy());
    assert_eq!(s.sql(ROWS), "at-backup");
    assert_eq!(s.data_volume(), volume);
    assert_eq!(s.volumes(), vec![volume.clone()]);
    assert_eq!(s.text(), original);
    assert!(!s.dir.join("compose.yaml.bak").exists());

    // A standby on a new volume, with its own postgresql.auto.conf.
    let conf = s.dir.join("standby.auto.conf");
    std::fs::write(&conf, "work_mem = '7MB'\n").unwrap();
    ok(&stack.pgctl(&[
        "restore",
        &b,
        "--physical",
        "--standby",
        "--auto-conf",
        &conf.display().to_string(),
    ]));
    assert_ne!(s.data_volume(), volume);
    assert_eq!(s.sql("SELECT pg_is_in_recovery()"), "t");
    assert_eq!(s.sql("SHOW work_mem"), "7MB");
    assert_eq!(s.sql(ROWS), "at-backup");
    let o = run(Command::new("docker").args([
        "exec",
        &s.container(),
        "psql",
        "-U",
        "app",
        "-d",
        "app",
        "-c",
        "INSERT INTO t VALUES ('x')",
    ]));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("read-only"), "{}", stderr(&o));
}

/// Starts a physical restore with pgctl on the host whose `--post-sql` script sleeps, and kills
/// pgctl (SIGKILL: no chance to roll back) once the new container runs the script.
fn kill_mid_switch(stack: &Stack, s: &Scratch) {
    let scripts = s.dir.join("slow-sql");
    std::fs::create_dir_all(&scripts).unwrap();
    std::fs::write(scripts.join("10-slow.sql"), "SELECT pg_sleep(120);\n").unwrap();
    let mut child = stack
        .host_pgctl_cmd(&[
            "restore",
            "latest",
            "--physical",
            "--to",
            &s.target(),
            "--post-sql",
            &scripts.display().to_string(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let sleeping = wait_until(Duration::from_secs(120), || {
        let o = run(Command::new("docker").args([
            "exec",
            &s.container(),
            "psql",
            "-U",
            "app",
            "-d",
            "app",
            "-tAc",
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(120)%'",
        ]));
        (stdout(&o).trim() == "1").then_some(())
    });
    assert!(
        sleeping.is_some(),
        "the new container ran the post-sql script"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn a_switch_cut_off_half_way_is_reported_then_rolled_back_or_finished() {
    let stack = stack!();
    let s = Scratch::new(&stack);
    let original = s.text();
    let old_volume = format!("{}_pgdata", s.project);
    let old_id = s.container_id();
    s.sql("CREATE TABLE t (v text); INSERT INTO t VALUES ('at-backup')");
    backup(&stack, &s.target());
    s.sql("INSERT INTO t VALUES ('after-backup')");
    let journal = s.dir.join(".pgbackup-restore-pg.json");

    // Cut off: the service runs on the new volume, the compose file still names the old one,
    // the old container waits aside. Status says so, naming both ways out.
    kill_mid_switch(&stack, &s);
    assert!(journal.exists(), "the switch left its journal");
    assert!(s.leftovers().contains("pgbackup-replaced"));
    let status = ok(&stack.pgctl(&["status"]));
    assert!(
        status.contains(&format!("unfinished physical restore of {}", s.target()))
            && status.contains(&format!("pgctl restore --rollback {}", s.target())),
        "{status}"
    );

    // Rolled back: the old container, volume, data and compose file, nothing left over.
    let out = ok(&stack.pgctl(&["restore", "--rollback", &s.target()]));
    assert!(out.contains("rolled back"), "{out}");
    assert_eq!(s.container_id(), old_id);
    s.wait_healthy();
    assert_eq!(s.sql(ROWS), "after-backup,at-backup");
    assert_eq!(s.text(), original);
    assert_eq!(s.volumes(), vec![old_volume.clone()]);
    assert!(
        !s.leftovers().contains("pgbackup-replaced"),
        "{}",
        s.leftovers()
    );
    assert!(!journal.exists());
    let status = ok(&stack.pgctl(&["status"]));
    // Other tests of this binary switch their own scratch stacks meanwhile: only this one's
    // target must be gone from the warning.
    assert!(
        !status.contains(&format!("unfinished physical restore of {} ", s.target())),
        "{status}"
    );

    // Cut off again, then finished: the restored data, the compose file rewritten, the old
    // container gone, the old volume kept.
    kill_mid_switch(&stack, &s);
    let out = ok(&stack.pgctl(&["restore", "--resume", &s.target()]));
    assert!(out.contains("finished the restore"), "{out}");
    s.wait_healthy();
    assert_eq!(s.sql(ROWS), "at-backup");
    let new_volume = s.data_volume();
    assert!(
        new_volume.starts_with(&format!("{}_pgdata-restored-", s.project)),
        "{new_volume}"
    );
    assert!(s.text().contains("pgdata-restored-"), "{}", s.text());
    assert!(
        !s.leftovers().contains("pgbackup-replaced"),
        "{}",
        s.leftovers()
    );
    assert!(s.volumes().contains(&old_volume));
    assert!(!journal.exists());
    // The rewritten compose file brings the same data up.
    let o = s.compose(&["up", "-d", "--wait"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(s.sql(ROWS), "at-backup");
}

/// An encrypted base backup (README "Encryption"): the object in the bucket is an age file, a
/// restore without the identity or with a wrong one is refused with nothing changed, pgctl
/// restores it with the identity, and so do `age -d | zstd -d | tar -x` by hand.
#[test]
fn an_encrypted_physical_backup_restores_with_pgctl_and_with_the_age_cli() {
    let stack = stack!();
    let (identity, public) = pgbackup::pipeline::crypt::generate();
    let (other, _) = pgbackup::pipeline::crypt::generate();
    let s = Scratch::with_labels(&stack, &[("pgbackup.age_recipients", &public)]);
    let key = s.dir.join("key.txt");
    std::fs::write(&key, &identity).unwrap();
    let wrong = s.dir.join("other.txt");
    std::fs::write(&wrong, &other).unwrap();
    let (key, wrong) = (key.display().to_string(), wrong.display().to_string());

    s.sql("CREATE TABLE t (v text); INSERT INTO t VALUES ('at-backup')");
    let prefix = backup(&stack, &s.target());
    s.sql("INSERT INTO t VALUES ('after-backup')");
    let m = stack
        .list(&s.target())
        .into_iter()
        .find(|m| m["prefix"] == prefix.as_str())
        .unwrap();
    assert_eq!(m["encryption"]["recipients"], serde_json::json!([public]));
    assert_eq!(m["objects"][0]["name"], "base.tar.zst.age");
    let cfg = common::s3_config(&stack);
    let stored = common::get(&cfg, &format!("{prefix}/base.tar.zst.age"));
    assert!(stored.starts_with(b"age-encryption.org/v1\n"));
    assert!(
        !stored.windows(5).any(|w| w == b"ustar"),
        "tar headers in the clear"
    );

    // Refused before anything changes: no identity, a wrong one.
    let id_before = s.container_id();
    let volumes = s.volumes();
    let target = s.target();
    for extra in [vec![], vec!["--identity", wrong.as_str()]] {
        let mut args = vec!["restore", "latest", "--physical", "--to", &target];
        args.extend(extra);
        let o = stack.pgctl(&args);
        assert_eq!(o.status.code(), Some(2), "{}{}", stdout(&o), stderr(&o));
        assert!(stderr(&o).contains(&public), "{}", stderr(&o));
        assert!(stderr(&o).contains("nothing was changed"), "{}", stderr(&o));
        assert_eq!(s.container_id(), id_before);
        assert_eq!(s.volumes(), volumes);
    }
    ok(&stack.pgctl(&[
        "restore",
        "latest",
        "--physical",
        "--to",
        &s.target(),
        "--identity",
        &key,
    ]));
    s.wait_healthy();
    assert_eq!(s.sql(ROWS), "at-backup");

    // By hand, with the age CLI, into a new volume a plain `docker run` then serves.
    let volume = common::unique("agevol");
    let server = common::unique("agepg");
    let image = common::postgres_image();
    let data = "/var/lib/postgresql/data";
    let _v = HandMade(volume.clone(), server.clone());
    let dir = s.dir.display();
    let script = format!(
        "age -d -i {key} {dir}/base.tar.zst.age | zstd -d | docker run -i --rm -v {volume}:{data} {image} \
           sh -c 'tar -x -C {data} && chown -R postgres:postgres {data} && chmod 700 {data}'"
    );
    std::fs::write(s.dir.join("base.tar.zst.age"), &stored).unwrap();
    let o = run(Command::new("bash").args(["-euo", "pipefail", "-c", &script]));
    assert!(o.status.success(), "{script}\n{}", stderr(&o));
    let owner = format!("pgbackup-e2e.owner={}", stack.project);
    let mount = format!("{volume}:{data}");
    docker(&[
        "run",
        "-d",
        "--name",
        &server,
        "--label",
        &owner,
        "-e",
        "POSTGRES_PASSWORD=x",
        "-v",
        &mount,
        &image,
    ]);
    common::wait_ready(&server);
    assert_eq!(psql(&server, "app", "app", ROWS), "at-backup");
}

/// Removes the by-hand server and its volume when dropped.
struct HandMade(String, String);

impl Drop for HandMade {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.1]).output();
        let _ = Command::new("docker")
            .args(["volume", "rm", "-f", &self.0])
            .output();
    }
}
