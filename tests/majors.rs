//! End-to-end: every Postgres major of the matrix (13, 15, 17, 18) backed up and restored every
//! way, on the kitchen-sink fixture, in a compose project shaped like a user's (the data on a
//! named volume at the official image's place for that major: `/var/lib/postgresql/data` up to
//! 17, `/var/lib/postgresql` with PGDATA `18/docker` from 18 on). Per major:
//!
//! 1. a physical and an `exec` logical backup of the source;
//! 2. the logical backup restored into an empty server of the same major, labelled `connect`;
//! 3. that server backed up in `connect` mode (the sidecar's client 18) and restored into
//!    another empty server of the same major;
//! 4. the physical backup restored into the source's service (new volume, compose file
//!    rewritten);
//! 5. for 13 and 15: the README's "Upgrading Postgres" recipe, as written, to 17 and 18, and its
//!    way back.
//!
//! Every restore's fingerprint must equal the source's (across majors: less what the newer
//! major reads differently, see `across_majors`).

mod common;

use std::collections::BTreeMap;

use common::fixture::*;
use common::{Cleanup, Project, Stack, data_mount, docker, postgres_image_of, stderr, stdout};

const COMPOSE: &str = "name: PROJECT
services:
  db:
    image: IMAGE
    environment:
      POSTGRES_PASSWORD: scratch-password
    volumes:
      - db-data:MOUNT
    healthcheck:
      test: [\"CMD-SHELL\", \"pg_isready -q -U postgres -h 127.0.0.1\"]
      interval: 1s
      timeout: 5s
      retries: 300
    labels:
      pgbackup.enable: \"true\"
      pgbackup.schedule: \"off\"
      pgbackup-e2e.owner: OWNER

volumes:
  db-data:
";

#[test]
fn pg13_backups_restore_exactly_every_way_and_upgrade_to_17() {
    every_way(13, Some(17));
}

#[test]
fn pg15_backups_restore_exactly_every_way_and_upgrade_to_18() {
    every_way(15, Some(18));
}

#[test]
fn pg17_backups_restore_exactly_every_way() {
    every_way(17, None);
}

#[test]
fn pg18_backups_restore_exactly_every_way_with_its_new_data_layout() {
    every_way(18, None);
}

fn every_way(major: u32, upgrade_to: Option<u32>) {
    let s = stack!();
    let image = postgres_image_of(major);
    let p = Project::new(
        &format!("{}-swap-pg{major}", s.project),
        &COMPOSE
            .replace("IMAGE", &image)
            .replace("MOUNT", data_mount(major))
            .replace("OWNER", &s.project),
    );
    std::fs::write(
        p.dir.join("compose.yaml"),
        std::fs::read_to_string(p.dir.join("compose.yaml"))
            .unwrap()
            .replace("PROJECT", &p.project),
    )
    .unwrap();
    let o = p.compose(&["up", "-d", "--wait"]);
    assert!(o.status.success(), "compose up: {}", stderr(&o));
    let db = p.container("db");
    // Loaded by psql, not by init scripts: a new server on this compose file starts empty.
    load_fixture(&db);
    let target = format!("{}/db", p.project);
    common::wait_until(std::time::Duration::from_secs(30), || s.target(&target))
        .expect("the source is discovered");
    let before = fingerprint(&db, "postgres");
    let version = common::psql(&db, "postgres", "postgres", "SHOW server_version_num");
    assert!(
        version.starts_with(&major.to_string()),
        "{image} runs {version}, not Postgres {major}"
    );

    // 1. Physical and logical (exec) backups.
    let physical = backup_id(&s, &["backup", "--physical", "--wait", &target]);
    let logical = backup_id(&s, &["backup", "--wait", &target]);

    // 2. exec → an empty server of the same major, which is labelled `connect`.
    let copy = common::unique(&format!("pg{major}-connect"));
    let _c = Cleanup(copy.clone());
    let empty = start_empty(
        &s,
        &copy,
        &image,
        &[
            ("pgbackup.enable", "true"),
            ("pgbackup.schedule", "off"),
            ("pgbackup.method", "connect"),
        ],
    );
    common::wait_until(std::time::Duration::from_secs(30), || s.target(&copy))
        .expect("the connect target is discovered");
    pgctl_ok(&s, &["restore", &logical, "--from", &target, "--to", &copy]);
    let copied = fingerprint(&copy, "postgres");
    assert_restored_over(
        &before,
        &empty,
        &copied,
        &ALL,
        &format!("PG{major} exec → PG{major}"),
    );

    // 3. connect (the sidecar's client, 18) → another empty server of the same major.
    let m = backup_manifest(&s, &copy);
    assert_eq!(m["method"], "connect", "{m}");
    let dump_tool = m["postgres"]["dump_tool"].as_str().unwrap_or_default();
    assert!(
        dump_tool.contains("pg_dump (PostgreSQL) 18."),
        "the connect backup was not written by the sidecar's client 18: {m}"
    );
    assert_eq!(m["postgres"]["major"], major, "{m}");
    let third = common::unique(&format!("pg{major}-from-connect"));
    let _t = Cleanup(third.clone());
    let empty = start_empty(&s, &third, &image, &[]);
    pgctl_ok(
        &s,
        &[
            "restore",
            m["backup_id"].as_str().unwrap(),
            "--from",
            &copy,
            "--to",
            &third,
        ],
    );
    assert_restored_over(
        &copied,
        &empty,
        &fingerprint(&third, "postgres"),
        &ALL,
        &format!("PG{major} connect (client 18) → PG{major}"),
    );

    // 4. The physical backup into a new volume of the source's service.
    let out = pgctl_ok(&s, &["restore", &physical, "--physical", "--to", &target]);
    assert!(out.contains(data_mount(major)), "{out}");
    common::wait_healthy(&db);
    let compose = std::fs::read_to_string(p.dir.join("compose.yaml")).unwrap();
    let line = data_line(&compose, major);
    assert!(
        line.contains("-restored-"),
        "the compose file does not name the restored volume: {compose}"
    );
    let mounted = docker(&[
        "inspect",
        "-f",
        "{{range .Mounts}}{{.Name}}={{.Destination}} {{end}}",
        &db,
    ]);
    assert!(
        mounted.contains("-restored-") && mounted.contains(data_mount(major)),
        "{mounted}"
    );
    assert_restored(
        &before,
        &fingerprint(&db, "postgres"),
        &ALL,
        &format!("PG{major} physical → PG{major}, new volume"),
    );

    if let Some(new) = upgrade_to {
        upgrade(&s, &p, major, new, &before);
    }
}

/// The README's "Upgrading Postgres" recipe, run as written in the project's directory (only
/// `myapp/db` and the way to the stack's sidecar replaced), from `old` to `new`; then its way
/// back.
fn upgrade(s: &Stack, p: &Project, old: u32, new: u32, before: &BTreeMap<String, String>) {
    let blocks = common::readme_blocks("Upgrading Postgres", "sh");
    assert_eq!(blocks.len(), 3, "{blocks:?}");
    let yaml = common::readme_blocks("Upgrading Postgres", "yaml").join("");
    for shown in [
        "image: postgres:17",
        "- db-data-17:/var/lib/postgresql/data",
        "# for 18: - db-data-18:/var/lib/postgresql",
        "db-data:      # the old cluster, kept as it is",
        "  db-data-17:",
    ] {
        assert!(yaml.contains(shown), "the README's edit changed: {yaml}");
    }
    let sidecar = s.container("backup");
    let target = format!("{}/db", p.project);
    let run = |block: &str| {
        let script = block
            .replace(
                "docker compose exec backup pgctl",
                &format!("docker exec {sidecar} pgctl"),
            )
            .replace("myapp/db", &target);
        let o = aws_sh(s, &p.dir, &script);
        assert!(
            o.status.success(),
            "README upgrade recipe failed:\n{script}\n{}{}",
            stdout(&o),
            stderr(&o)
        );
        format!("{}{}", stdout(&o), stderr(&o))
    };
    let db = p.container("db");

    // 1. Back up now.
    run(&blocks[0]);
    // 2. The edit the README shows: the new image, a new volume at the new major's place.
    let file = p.dir.join("compose.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    let old_line = data_line(&text, old);
    let old_image = format!("image: {}", postgres_image_of(old));
    assert!(text.contains(&old_image), "{text}");
    let text = text
        .replace(&old_image, &format!("image: {}", postgres_image_of(new)))
        .replace(
            &old_line,
            &format!("      - db-data-{new}:{}", data_mount(new)),
        )
        + &format!("  db-data-{new}:\n");
    std::fs::write(&file, text).unwrap();
    // 3. The new server, the restore, ANALYZE.
    let (up, rest) = blocks[1].split_once('\n').unwrap();
    run(up);
    let empty = fingerprint(&db, "postgres");
    let out = run(rest);
    assert!(
        out.contains(&format!("upgrade    Postgres {old} → {new}")),
        "the plan does not show the upgrade: {out}"
    );
    assert!(
        out.contains(&format!("Postgres {old}, ")) && out.contains(&format!("Postgres {new}, as")),
        "{out}"
    );
    let version = common::psql(&db, "postgres", "postgres", "SHOW server_version_num");
    assert!(version.starts_with(&new.to_string()), "{version}");
    assert_restored_over(
        &across_majors(before),
        &across_majors(&empty),
        &across_majors(&fingerprint(&db, "postgres")),
        &ALL,
        &format!("upgrade PG{old} → PG{new} by the README's recipe"),
    );
    // The old volume is kept: the way back gives the old cluster back.
    run(&blocks[2]);
    let version = common::psql(&db, "postgres", "postgres", "SHOW server_version_num");
    assert!(version.starts_with(&old.to_string()), "{version}");
    assert_restored(
        before,
        &fingerprint(&db, "postgres"),
        &ALL,
        &format!("the way back to PG{old}"),
    );
}

/// An empty server of `image` on the stack's network; its fingerprint.
fn start_empty(
    s: &Stack,
    name: &str,
    image: &str,
    labels: &[(&str, &str)],
) -> BTreeMap<String, String> {
    start(s, name, image, "postgres", false, labels);
    fingerprint(name, "postgres")
}

/// The id a `pgctl backup … --wait` printed.
fn backup_id(s: &Stack, args: &[&str]) -> String {
    pgctl_ok(s, args)
        .split_whitespace()
        .nth(2)
        .expect("backup id in the output")
        .to_string()
}

/// The `volumes:` line of `compose` that mounts the data volume of `major`.
fn data_line(compose: &str, major: u32) -> String {
    let suffix = format!(":{}", data_mount(major));
    compose
        .lines()
        .find(|l| l.trim_start().starts_with("- ") && l.trim_end().ends_with(&suffix))
        .unwrap_or_else(|| panic!("no data volume line mounting {suffix}: {compose}"))
        .to_string()
}
