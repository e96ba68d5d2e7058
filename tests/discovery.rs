//! End-to-end: live discovery of labelled Postgres containers, label errors, and start-up
//! checks, against the real Docker engine, Postgres and Garage.

mod common;

use std::time::Duration;

use common::{Cleanup, docker, stderr, stdout, unique, wait_until};

#[test]
fn labelled_compose_targets_are_discovered_and_unlabelled_are_not() {
    let s = stack!();
    let st = s.status();
    assert_eq!(
        st["source"], "controller",
        "status must come from the running controller"
    );
    assert_eq!(st["docker"]["connected"], true);

    let db = s
        .target(&format!("{}/db", s.project))
        .expect("the demo db (Postgres 17) is listed");
    assert_eq!(db["state"], "valid", "{db}");
    assert_eq!(db["settings"]["schedule"], "@daily");
    assert_eq!(db["settings"]["method"], "exec");
    assert_eq!(
        db["settings"]["user"], "app",
        "POSTGRES_USER is the default role"
    );
    assert!(
        db["next_run"].is_string(),
        "a valid target has a next run: {db}"
    );

    let db15 = s
        .target(&format!("{}/db15", s.project))
        .expect("the Postgres 15 target is listed");
    assert_eq!(db15["state"], "valid", "{db15}");
    assert_eq!(db15["settings"]["method"], "connect");
    assert_eq!(db15["settings"]["schedule"], "0 3 * * *");

    for t in st["targets"].as_array().unwrap() {
        let name = t["target"].as_str().unwrap();
        assert!(
            !name.ends_with("/unlabelled")
                && !name.ends_with("/db-restore")
                && !name.contains("garage"),
            "{name} carries no pgbackup.enable label and must not be listed"
        );
    }

    // The same, for people.
    let o = s.pgctl(&["status"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = stdout(&o);
    assert!(table.starts_with("TARGET"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&format!("{}/db ", s.project))
                && l.contains("valid")
                && l.contains("@daily")),
        "{table}"
    );
}

#[test]
fn container_started_later_is_listed_within_5s_and_disappears_when_stopped_or_removed() {
    let s = stack!();
    let name = unique("late");
    let _guard = Cleanup(name.clone());
    s.start_container(
        &name,
        &[
            ("pgbackup.enable", "true"),
            ("pgbackup.schedule", "@hourly"),
        ],
    );

    let listed = wait_until(Duration::from_secs(5), || s.target(&name));
    let t = listed.expect("a labelled container started after the controller is listed within 5 s");
    assert_eq!(t["state"], "valid");
    assert_eq!(t["settings"]["schedule"], "@hourly");
    assert_eq!(
        t["settings"]["prefix"], name,
        "outside compose the identity is the container name"
    );

    docker(&["stop", "-t", "1", &name]);
    assert!(
        wait_until(Duration::from_secs(5), || s
            .target(&name)
            .is_none()
            .then_some(()))
        .is_some(),
        "a stopped container disappears"
    );

    docker(&["start", &name]);
    assert!(
        wait_until(Duration::from_secs(5), || s.target(&name)).is_some(),
        "a restarted container comes back"
    );

    let renamed = format!("{name}-renamed");
    let _guard2 = Cleanup(renamed.clone());
    docker(&["rename", &name, &renamed]);
    assert!(
        wait_until(Duration::from_secs(5), || {
            (s.target(&renamed).is_some() && s.target(&name).is_none()).then_some(())
        })
        .is_some(),
        "a renamed container is listed under its new name"
    );

    docker(&["rm", "-f", &renamed]);
    assert!(
        wait_until(Duration::from_secs(5), || s
            .target(&renamed)
            .is_none()
            .then_some(()))
        .is_some(),
        "a removed container disappears"
    );
}

#[test]
fn bad_label_marks_only_that_target_invalid() {
    let s = stack!();
    let name = unique("badcron");
    let _guard = Cleanup(name.clone());
    s.start_container(
        &name,
        &[
            ("pgbackup.enable", "true"),
            ("pgbackup.schedule", "not-a-cron"),
        ],
    );

    let t = wait_until(Duration::from_secs(5), || s.target(&name))
        .expect("the invalid target is listed");
    assert_eq!(t["state"], "invalid", "{t}");
    let err = &t["errors"][0];
    assert_eq!(err["label"], "pgbackup.schedule");
    assert_eq!(err["value"], "not-a-cron");

    // The others keep running, and the controller is still healthy.
    let db = s
        .target(&format!("{}/db", s.project))
        .expect("db still listed");
    assert_eq!(db["state"], "valid");
    // By container, not `compose ps`: that lists every container of the service, and fails
    // when another test's one-off sidecar (`compose run --rm`) vanishes while it inspects it.
    let sidecar = format!("{}-backup-1", s.project);
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.Running}}", &sidecar]),
        "true",
        "the controller keeps running"
    );

    let table = stdout(&s.pgctl(&["status"]));
    assert!(
        table.contains("label pgbackup.schedule=\"not-a-cron\" is not valid"),
        "the table names the label and the value: {table}"
    );
}

/// `pgbackup.databases` takes database names: a connection string (another server, a password)
/// or a name listed twice marks the target invalid; the password appears nowhere; nothing is
/// backed up.
#[test]
fn database_lists_with_connection_strings_or_duplicates_are_refused() {
    let s = stack!();
    for (prefix, value) in [
        (
            "connstr",
            "host=elsewhere user=x password=hunter2-secret dbname=app",
        ),
        ("connuri", "postgresql://x:hunter2-secret@elsewhere/app"),
        ("twice", "postgres,postgres"),
    ] {
        let name = unique(prefix);
        let _guard = Cleanup(name.clone());
        s.start_container(
            &name,
            &[
                ("pgbackup.enable", "true"),
                ("pgbackup.schedule", "off"),
                ("pgbackup.databases", value),
            ],
        );
        let t = wait_until(Duration::from_secs(5), || s.target(&name))
            .expect("the invalid target is listed");
        assert_eq!(t["state"], "invalid", "{t}");
        assert_eq!(t["errors"][0]["label"], "pgbackup.databases", "{t}");
        let table = stdout(&s.pgctl(&["status"]));
        let json = s.status().to_string();
        assert!(
            !table.contains("hunter2") && !json.contains("hunter2"),
            "{table}{json}"
        );
        let o = s.pgctl(&["backup", "--wait", &name]);
        assert!(!o.status.success(), "{}{}", stdout(&o), stderr(&o));
        assert!(!stderr(&o).contains("hunter2"), "{}", stderr(&o));
        assert!(s.list(&name).is_empty(), "nothing is listed for {value}");
    }
    let logs = stdout(&s.compose(&["logs", "--no-color", "backup"]));
    assert!(!logs.contains("hunter2"), "a password reached the logs");
}

#[test]
fn compose_run_one_off_containers_are_ignored() {
    let s = stack!();
    let o = s.compose(&["run", "-d", "--no-deps", "--name", &unique("oneoff"), "db"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let id = stdout(&o).trim().to_string();
    let _guard = Cleanup(id.clone());
    // Give events and one resync (10 s in the test stack) the chance to list it wrongly.
    std::thread::sleep(Duration::from_secs(11));
    let st = s.status();
    let names: Vec<&str> = st["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["container"].as_str().unwrap())
        .collect();
    assert!(
        !names.iter().any(|n| n.contains("oneoff")),
        "one-off container listed: {names:?}"
    );
    assert_eq!(
        st["targets"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["target"] == format!("{}/db", s.project))
            .count(),
        1,
        "only the service's own db container is the db target"
    );
}

/// `pgctl run` in a one-off sidecar container with changed settings; returns (exit code, stderr).
fn run_controller(s: &common::Stack, env: &[&str]) -> (i32, String) {
    let mut args = vec!["run", "--rm", "--no-deps", "-T"];
    for e in env {
        args.push("-e");
        args.push(e);
    }
    args.push("backup");
    args.push("run");
    let o = s.compose(&args);
    (o.status.code().unwrap_or(-1), stderr(&o) + &stdout(&o))
}

#[test]
fn wrong_s3_credentials_stop_run_with_a_clear_message() {
    let s = stack!();
    let (code, out) = run_controller(
        &s,
        &["S3_SECRET_ACCESS_KEY=0000000000000000000000000000000000000000000000000000000000000000"],
    );
    assert_eq!(
        code, 3,
        "exit code 3 = dependency refused at start-up; output: {out}"
    );
    assert!(out.contains("refused access to bucket"), "{out}");
    assert!(
        out.contains("S3_SECRET_ACCESS_KEY"),
        "the message says what to fix: {out}"
    );
    assert!(
        !out.contains("9ee5125902ef55aa"),
        "the real secret never reaches the logs: {out}"
    );

    let (code, out) = run_controller(&s, &["S3_BUCKET=no-such-bucket"]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("no-such-bucket"), "{out}");
}

#[test]
fn bad_configuration_exits_2_naming_the_variable() {
    let s = stack!();
    let (code, out) = run_controller(&s, &["PGBACKUP_CONCURRENCY=lots"]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("PGBACKUP_CONCURRENCY=\"lots\" is not valid"),
        "{out}"
    );

    let (code, out) = run_controller(&s, &["S3_BUCKET="]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("S3_BUCKET is required"), "{out}");
}

#[test]
fn unreachable_docker_stops_run_with_a_clear_message() {
    let s = stack!();
    let (code, out) = run_controller(&s, &["DOCKER_HOST=tcp://127.0.0.1:1"]);
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("cannot connect to the Docker daemon at tcp://127.0.0.1:1"),
        "{out}"
    );
}
