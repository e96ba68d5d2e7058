use super::*;
use crate::engine::docker::DockerError;
use crate::model::manifest::{Physical, Postgres, Tool};
use crate::model::{Format, Method};

fn inspect() -> Inspected {
    Inspected::from_json(crate::engine::container::fixture_json()).unwrap()
}

/// The fixture with one change to its `docker inspect` JSON.
fn inspect_with(change: impl FnOnce(&mut serde_json::Value)) -> Inspected {
    let mut v = crate::engine::container::fixture_json();
    change(&mut v);
    Inspected::from_json(v).unwrap()
}

fn manifest(major: u32, kind: Kind) -> Manifest {
    Manifest {
        format_version: 1,
        backup_id: "20261121T101500Z-physical".parse().unwrap(),
        kind,
        target: "shop/db".into(),
        prefix: "shop/db/20261121T101500Z-physical".into(),
        container: "shop-db-1".into(),
        method: Method::Exec,
        format: Format::Tar,
        compression: "zstd:3".into(),
        postgres: Postgres {
            server_version: format!("{major}.2"),
            major,
            dump_tool: "pg_basebackup".into(),
        },
        databases: vec![],
        objects: vec![Object {
            name: "base.tar.zst".into(),
            kind: ObjectKind::Base,
            database: None,
            size: 100 << 20,
            raw_size: 1 << 30,
            sha256: "00".repeat(32),
        }],
        started_at: chrono::Utc::now(),
        finished_at: chrono::Utc::now(),
        tool: Tool::default(),
        physical: Some(Physical {
            system_identifier: "7312345678901234567".into(),
            data_directory: "/var/lib/postgresql/data".into(),
            wal_method: "fetch".into(),
            image: "postgres:17".into(),
        }),
        facts: None,
        encryption: None,
    }
}

fn probe(major: u32, free_gib: u64) -> Probe {
    Probe {
        major,
        available: free_gib << 30,
        used: 0,
    }
}

fn edit() -> Edit {
    let text = "services:\n  db:\n    volumes:\n      - db-data:/var/lib/postgresql/data\nvolumes:\n  db-data:\n";
    let p = PathBuf::from("/srv/shop/compose.yaml");
    compose::plan_edit(
        &[(p.clone(), p, text.into())],
        "db",
        "/var/lib/postgresql/data",
        |old, taken| compose::restored_key(old, "20261121t101500z", taken),
    )
    .unwrap()
}

fn plan_with(
    m: Manifest,
    p: Probe,
    options: Options,
    e: Result<Option<Edit>, String>,
) -> Result<Plan, RestoreError> {
    let s = service_of(&inspect(), "/var/lib/postgresql/data").unwrap();
    let labels = HashMap::from([(
        "com.docker.compose.version".to_string(),
        "2.40.3".to_string(),
    )]);
    decide(m, s, p, e, &labels, options, Inputs::default())
}

#[test]
fn service_facts_from_inspect() {
    let s = service_of(&inspect(), "/ignored").unwrap();
    assert_eq!(s.project, "shop");
    assert_eq!(s.service, "db");
    assert_eq!(s.container_name, "shop-db-1");
    assert_eq!(s.volume, "shop_db-data");
    assert_eq!(s.mount, "/var/lib/postgresql/data");
    assert_eq!(s.user, "app");
    assert_eq!(s.database, "shop");
    assert_eq!(s.config_files.len(), 2);
    assert!(s.running);
}

#[test]
fn data_directory_on_a_bind_mount_or_outside_compose_is_refused() {
    let i = inspect_with(|v| v["Mounts"][0]["Type"] = "bind".into());
    let e = service_of(&i, "/x").unwrap_err();
    assert!(
        matches!(e, RestoreError::Refused(_)) && e.to_string().contains("bind mount"),
        "{e}"
    );
    let i = inspect_with(|v| v["Config"]["Labels"] = serde_json::json!({}));
    let e = service_of(&i, "/x").unwrap_err();
    assert!(
        e.to_string().contains("not part of a compose project"),
        "{e}"
    );
    let i = inspect_with(|v| v["Mounts"] = serde_json::json!([]));
    assert!(
        service_of(&i, "/x")
            .unwrap_err()
            .to_string()
            .contains("not on a volume")
    );
}

#[test]
fn option_misuse_is_a_usage_error() {
    let cases = [
        (
            Options {
                in_place: true,
                ..Default::default()
            },
            "--yes",
        ),
        (
            Options {
                yes: true,
                ..Default::default()
            },
            "only confirms --in-place",
        ),
        (
            Options {
                in_place: true,
                yes: true,
                standby: true,
                ..Default::default()
            },
            "--standby cannot",
        ),
        (
            Options {
                standby: true,
                post_sql: Some("/x".into()),
                ..Default::default()
            },
            "read-only",
        ),
    ];
    for (o, says) in cases {
        let e = check_options(&o).unwrap_err();
        assert_eq!(e.exit_code(), crate::exit::USAGE);
        assert!(e.to_string().contains(says), "{e}");
    }
    assert!(
        check_options(&Options {
            in_place: true,
            yes: true,
            ..Default::default()
        })
        .is_ok()
    );
    assert!(
        check_options(&Options {
            standby: true,
            ..Default::default()
        })
        .is_ok()
    );
}

#[test]
fn option_files_are_read_or_named() {
    let dir = tempfile::tempdir().unwrap();
    let o = Options {
        auto_conf: Some(dir.path().join("missing.conf")),
        ..Default::default()
    };
    let e = load_inputs(&o).unwrap_err();
    assert!(
        e.to_string().contains("missing.conf") && e.exit_code() == crate::exit::USAGE,
        "{e}"
    );
    let o = Options {
        post_sql: Some(dir.path().into()),
        ..Default::default()
    };
    assert!(
        load_inputs(&o)
            .unwrap_err()
            .to_string()
            .contains("holds no *.sql")
    );
    std::fs::write(dir.path().join("20-b.sql"), "select 2;").unwrap();
    std::fs::write(dir.path().join("10-a.sql"), "select 1;").unwrap();
    std::fs::write(dir.path().join("notes.txt"), "no").unwrap();
    std::fs::write(dir.path().join("auto.conf"), "work_mem = '8MB'\n").unwrap();
    let o = Options {
        post_sql: Some(dir.path().into()),
        auto_conf: Some(dir.path().join("auto.conf")),
        ..Default::default()
    };
    let i = load_inputs(&o).unwrap();
    let names: Vec<&str> = i.scripts.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["10-a.sql", "20-b.sql"], "name order, .sql only");
    assert_eq!(i.auto_conf.as_deref(), Some(&b"work_mem = '8MB'\n"[..]));
}

#[test]
fn probe_output() {
    let p =
        parse_probe("version postgres (PostgreSQL) 17.6 (Debian 17.6-1)\navail 1048576\nused 0\n")
            .unwrap();
    assert_eq!(
        p,
        Probe {
            major: 17,
            available: 1 << 30,
            used: 0
        }
    );
    let p = parse_probe("version 15\navail 10\nused 20\n").unwrap();
    assert_eq!((p.major, p.used), (15, 20 * 1024));
    assert!(
        parse_probe("version \navail 1\nused 0")
            .unwrap_err()
            .contains("Postgres version")
    );
    assert!(
        parse_probe("version 17\n")
            .unwrap_err()
            .contains("free space")
    );
}

#[test]
fn plan_for_a_new_volume() {
    let plan = plan_with(
        manifest(17, Kind::Physical),
        probe(17, 50),
        Options::default(),
        Ok(Some(edit())),
    )
    .unwrap();
    assert_eq!(
        plan.new_volume.as_deref(),
        Some("shop_db-data-restored-20261121t101500z")
    );
    assert_eq!(plan.volume_labels["com.docker.compose.project"], "shop");
    assert_eq!(
        plan.volume_labels["com.docker.compose.volume"],
        "db-data-restored-20261121t101500z"
    );
    assert_eq!(plan.volume_labels["com.docker.compose.version"], "2.40.3");
    let text = plan.to_string();
    for says in [
        "shop/db 20261121T101500Z-physical",
        "system 7312345678901234567",
        "volume shop_db-data is kept",
        "- - db-data:/var/lib/postgresql/data",
        "+ - db-data-restored-20261121t101500z:/var/lib/postgresql/data",
        "+ db-data-restored-20261121t101500z: null",
        "the service keeps running",
    ] {
        assert!(text.contains(says), "{says:?} missing in\n{text}");
    }
}

#[test]
fn refusals() {
    let e = plan_with(
        manifest(15, Kind::Physical),
        probe(17, 50),
        Options::default(),
        Ok(Some(edit())),
    )
    .unwrap_err();
    assert_eq!(e.exit_code(), crate::exit::REFUSED);
    assert!(
        e.to_string().contains("Postgres 15 cluster") && e.to_string().contains("runs Postgres 17"),
        "{e}"
    );
    let e = plan_with(
        manifest(17, Kind::Physical),
        probe(17, 1),
        Options::default(),
        Ok(Some(edit())),
    )
    .unwrap_err();
    assert!(e.to_string().contains("not enough space"), "{e}");
    // In place, the current data's space counts as free.
    let mut p = probe(17, 1);
    p.used = 2 << 30;
    let o = Options {
        in_place: true,
        yes: true,
        ..Default::default()
    };
    let plan = plan_with(manifest(17, Kind::Physical), p, o, Ok(None)).unwrap();
    assert!(plan.new_volume.is_none());
    assert!(plan.to_string().contains("IN PLACE"));
    let e = plan_with(
        manifest(17, Kind::Physical),
        probe(17, 50),
        Options::default(),
        Err("the compose file /x is not reachable here".into()),
    )
    .unwrap_err();
    assert_eq!(e.exit_code(), crate::exit::REFUSED);
    assert!(e.to_string().contains("not reachable"));
    let e = plan_with(
        manifest(17, Kind::Logical),
        probe(17, 50),
        Options::default(),
        Ok(Some(edit())),
    )
    .unwrap_err();
    assert_eq!(e.exit_code(), crate::exit::USAGE);
}

/// Records what a rollback asks of Docker; the calls named in `failing` fail.
#[derive(Default)]
struct FakeDocker {
    calls: std::sync::Mutex<Vec<String>>,
    failing: Vec<&'static str>,
}

impl FakeDocker {
    fn call(&self, what: String) -> Result<(), DockerError> {
        let fails = self.failing.iter().any(|f| what.starts_with(f));
        self.calls.lock().unwrap().push(what);
        if fails {
            return Err(DockerError::Timeout { call: "fake" });
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl crate::engine::Lifecycle for FakeDocker {
    async fn start_container(&self, id: &str) -> Result<(), DockerError> {
        self.call(format!("start {id}"))
    }
    async fn rename_container(&self, id: &str, name: &str) -> Result<(), DockerError> {
        self.call(format!("rename {id} {name}"))
    }
    async fn remove_container(&self, id: &str) -> Result<(), DockerError> {
        self.call(format!("remove {id}"))
    }
    async fn remove_volume(&self, name: &str) -> Result<(), DockerError> {
        self.call(format!("remove-volume {name}"))
    }
}

fn undo() -> Undo {
    Undo {
        volume_created: None,
        old_renamed_to: None,
        old_stopped: false,
        new_container: None,
        compose_written: false,
        wiped: false,
        journal: None,
    }
}

/// Every state a switch can fail in is undone in reverse: the new container goes, the old one
/// gets its name back and runs again, the new volume goes, the compose file comes back from its
/// `.bak`, the journal goes; what could not be undone is said.
#[tokio::test]
async fn rollback_undoes_each_step_that_was_done() {
    let dir = tempfile::tempdir().unwrap();
    let mut e = edit();
    e.local = dir.path().join("compose.yaml");
    std::fs::write(&e.local, "rewritten").unwrap();
    std::fs::write(e.backup_path(), "original").unwrap();
    let journal = dir.path().join(".pgbackup-restore-db.json");
    let plan = plan_with(
        manifest(17, Kind::Physical),
        probe(17, 50),
        Options::default(),
        Ok(Some(e.clone())),
    )
    .unwrap();
    let old = plan.service.container_id.clone();
    let name = plan.service.container_name.clone();
    let vol = plan.new_volume.clone().unwrap();

    // Nothing done yet (the preflight failed): nothing to undo, and it says so.
    let d = FakeDocker::default();
    let said = rollback(&d, &plan, &undo()).await;
    assert!(d.calls.lock().unwrap().is_empty());
    assert!(
        said.contains("kept running") && said.contains("compose file was not changed"),
        "{said}"
    );

    // The volume was filled: it goes.
    let d = FakeDocker::default();
    let u = Undo {
        volume_created: Some(vol.clone()),
        ..undo()
    };
    rollback(&d, &plan, &u).await;
    assert_eq!(*d.calls.lock().unwrap(), [format!("remove-volume {vol}")]);

    // Cut off after the new container was created: it goes, the old one is renamed back and
    // started, the volume goes.
    std::fs::write(&journal, "{}").unwrap();
    let d = FakeDocker::default();
    let u = Undo {
        volume_created: Some(vol.clone()),
        old_stopped: true,
        old_renamed_to: Some(format!("{name}-pgbackup-replaced")),
        new_container: Some("new-id".into()),
        journal: Some(journal.clone()),
        ..undo()
    };
    let said = rollback(&d, &plan, &u).await;
    assert_eq!(
        *d.calls.lock().unwrap(),
        [
            "remove new-id".to_string(),
            format!("rename {old} {name}"),
            format!("start {old}"),
            format!("remove-volume {vol}"),
        ]
    );
    assert!(said.contains("running on its old volume"), "{said}");
    assert!(!journal.exists(), "the journal goes with the rollback");

    // The compose file was already rewritten: it comes back from its .bak.
    let d = FakeDocker::default();
    let u = Undo {
        compose_written: true,
        ..undo()
    };
    let said = rollback(&d, &plan, &u).await;
    assert_eq!(std::fs::read_to_string(&e.local).unwrap(), "original");
    assert!(said.contains("restored"), "{said}");

    // What fails is said, and the rest is still undone.
    let d = FakeDocker {
        failing: vec!["rename", "start"],
        ..Default::default()
    };
    let u = Undo {
        volume_created: Some(vol.clone()),
        old_stopped: true,
        old_renamed_to: Some("aside".into()),
        ..undo()
    };
    let said = rollback(&d, &plan, &u).await;
    assert!(
        said.contains("could not rename the old container back"),
        "{said}"
    );
    assert!(said.contains("docker compose up -d db"), "{said}");
    assert!(
        d.calls
            .lock()
            .unwrap()
            .contains(&format!("remove-volume {vol}"))
    );

    // In place, after the wipe: nothing to go back to, and it says so.
    let d = FakeDocker::default();
    let u = Undo {
        wiped: true,
        old_stopped: true,
        ..undo()
    };
    let said = rollback(&d, &plan, &u).await;
    assert!(said.contains("its old data is gone"), "{said}");
    assert!(d.calls.lock().unwrap().is_empty());
}
