//! End-to-end: two compose projects on one host, each with its own sidecar. A sidecar acts only
//! on its own project by default (`PGBACKUP_SCOPE` unset): it lists, backs up, prunes and
//! restores into its own containers, a bare service name resolves inside its project, and a
//! container of the other project is refused by name with the reason.

mod common;

use std::time::Duration;

use common::{stderr, stdout, wait_until};
use serde_json::Value;

#[test]
fn a_sidecar_acts_only_on_its_own_compose_project() {
    let s = stack!();
    // A second project: a `db` service (like the test stack's) and a sidecar with default
    // scope on the same Garage.
    let other = common::Project::new(
        "scope",
        &format!(
            r#"services:
  db:
    image: {pg}
    environment:
      POSTGRES_PASSWORD: other-password
    labels:
      pgbackup.enable: "true"
      pgbackup.schedule: "@daily"
    healthcheck:
      test: ["CMD-SHELL", "pg_isready -q -h 127.0.0.1"]
      interval: 2s
      retries: 60
  backup:
    image: {sidecar}
    environment:
      S3_ENDPOINT: http://garage:3900
      S3_REGION: garage
      S3_BUCKET: pgbackup
      S3_ACCESS_KEY_ID: GK5a0696932d5415f414fe611f
      S3_SECRET_ACCESS_KEY: 9ee5125902ef55aa4941e05962e260ee547efe45d9c1ad3e2c2dfcaccb976025
      PGBACKUP_RUN_ON_STARTUP: "false"
    volumes:
      - /var/run/docker.sock:/var/run/docker.sock
    networks: [default, shared]
networks:
  shared:
    external: true
    name: {network}
"#,
            pg = common::postgres_image(),
            sidecar = s.sidecar_image(),
            network = s.network(),
        ),
    );
    let project = other.project.clone();
    let o = other.compose(&["up", "-d", "--wait"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));

    // Only its own target is listed: not the test stack's db, db15, nor standalone containers.
    let own = format!("{project}/db");
    let listed = wait_until(Duration::from_secs(30), || {
        let o = other.pgctl(&["status", "--json"]);
        let v: Value = serde_json::from_slice(&o.stdout).ok()?;
        let names: Vec<String> = v["targets"]
            .as_array()?
            .iter()
            .map(|t| t["target"].as_str().unwrap_or_default().to_string())
            .collect();
        names.contains(&own).then_some(names)
    })
    .expect("the other sidecar lists its own db");
    assert_eq!(listed, vec![own.clone()], "nothing outside its project");
    assert!(
        s.target(&own).is_some(),
        "the test stack's sidecar (PGBACKUP_SCOPE=host) does see it"
    );

    // `backup --all` backs up its own target only.
    let o = other.pgctl(&["backup", "--all", "--wait", "--json"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let out: Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let targets: Vec<&str> = out["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["target"].as_str().unwrap())
        .collect();
    assert_eq!(targets, vec![own.as_str()], "{out}");

    // Prune without names: its own target only.
    let o = other.pgctl(&["prune", "--dry-run"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains(&own), "{}", stdout(&o));
    assert!(
        !stdout(&o).contains(&format!("{}/db", s.project)),
        "{}",
        stdout(&o)
    );

    // A bare `db` is its own project's db (the test stack has a `db` too) ...
    let o = other.pgctl(&[
        "restore",
        "latest",
        "--from",
        &own,
        "--to",
        "db",
        "--clean",
        "--dry-run",
    ]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stderr(&o).contains(&format!("{project}-db-1")),
        "{}",
        stderr(&o)
    );
    // ... and the other project's db is refused by name, with the reason.
    let theirs = format!("{}/db", s.project);
    let o = other.pgctl(&[
        "restore",
        "latest",
        "--from",
        &own,
        "--to",
        &theirs,
        "--clean",
        "--dry-run",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stderr(&o).contains("outside this sidecar's scope"),
        "{}",
        stderr(&o)
    );
}
