//! End-to-end: the README's "With standard tools only" recipes, run as written — `aws s3 cp`,
//! `sha256sum -c`, `zstd`, `pg_restore`/`psql` through `docker compose exec` — in a scratch
//! compose project whose services are named as in the README (`db` with user `app`, `backup`
//! from the sidecar image). Only the example backup folder and object name are replaced by
//! real ones. The restored cluster's fingerprint must equal the source's.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::fixture::*;
use common::{Cleanup, Stack, run, stderr, stdout, unique};

/// The ```sh blocks under the README heading `### {heading}`, in order.
fn readme_blocks(heading: &str) -> Vec<String> {
    common::readme_blocks(heading, "sh")
}

const COMPOSE: &str = "name: PROJECT
services:
  db:
    image: IMAGE
    environment:
      POSTGRES_USER: app
      POSTGRES_PASSWORD: recipe-password
      POSTGRES_DB: app
    labels:
      pgbackup-e2e.owner: OWNER
  backup:
    image: SIDECAR
    entrypoint: [\"sleep\", \"infinity\"]
    labels:
      pgbackup-e2e.owner: OWNER
";

/// A compose project named like the README's (`db`, `backup`) in its own directory.
struct Project {
    name: String,
    dir: PathBuf,
}

impl Project {
    fn new(s: &Stack, image: &str) -> Project {
        let name = unique("recipe");
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        let sidecar = std::env::var("PGBACKUP_IMAGE").unwrap_or_else(|_| "pgbackup:local".into());
        let text = COMPOSE
            .replace("PROJECT", &name)
            .replace("IMAGE", image)
            .replace("SIDECAR", &sidecar)
            .replace("OWNER", &s.project);
        std::fs::write(dir.join("compose.yaml"), text).unwrap();
        let p = Project { name, dir };
        let o = run(Command::new("docker")
            .args(["compose", "up", "-d"])
            .current_dir(&p.dir));
        assert!(o.status.success(), "compose up: {}", stderr(&o));
        common::wait_ready(&p.db());
        p
    }

    fn db(&self) -> String {
        format!("{}-db-1", self.name)
    }

    /// Runs one README block in the project's directory with the stack's Garage as S3.
    fn sh(&self, s: &Stack, script: &str) -> String {
        let o = aws_sh(s, &self.dir, script);
        assert!(
            o.status.success(),
            "README recipe failed:\n{script}\n{}{}",
            stdout(&o),
            stderr(&o)
        );
        format!("{}{}", stdout(&o), stderr(&o))
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = run(Command::new("docker")
            .args(["compose", "down", "-v", "--remove-orphans"])
            .current_dir(&self.dir));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The example backup folder a README block sets (`B=s3://…`), to be replaced by a real one.
fn example_folder(block: &str) -> String {
    block
        .lines()
        .find_map(|l| {
            l.strip_prefix("B=")
                .and_then(|v| v.split_whitespace().next())
        })
        .expect("the block sets B")
        .to_string()
}

/// Backs up a fixture source, restores it with the README's blocks (`which`: the block used
/// for each database) into a fresh server of the same image, and compares.
fn recipe(prefix: &str, image: &str, labels: &[(&str, &str)], which: usize) {
    let s = stack!();
    let blocks = readme_blocks("With standard tools only");
    assert_eq!(
        blocks.len(),
        4,
        "the README's standard-tools section changed: {blocks:#?}"
    );
    // The README's scenario: a service's backup restored into a server with the same
    // superuser (`app`, as in the example stack).
    let src = source_as(&s, prefix, image, "app", labels);
    let _c = Cleanup(src.clone());
    let before = fingerprint(&src, "app");
    let m = backup_manifest(&s, &src);
    let folder = format!("s3://pgbackup/{}", m["prefix"].as_str().unwrap());

    let p = Project::new(&s, image);
    let example = example_folder(&blocks[0]);
    p.sh(&s, &blocks[0].replace(&example, &folder));
    let object_example = if blocks[which].contains("app.sql.zst") {
        "app.sql.zst"
    } else {
        "app.dump.zst"
    };
    for o in m["objects"].as_array().unwrap() {
        // The fixture's databases; `postgres` and `app` exist on the fresh server already
        // (the README: drop such a database first).
        if o["kind"] != "database" || o["database"] == "postgres" || o["database"] == "app" {
            continue;
        }
        p.sh(
            &s,
            &blocks[which].replace(object_example, o["name"].as_str().unwrap()),
        );
    }
    let dbs = [ODD, "globals", SHOP];
    let after = fingerprint(&p.db(), "app");
    // pg_dumpall's script sets roles the server has (`app`) to the source's attributes too.
    assert_restored(
        &before,
        &after,
        &dbs,
        &format!("README recipe {which} for {prefix}"),
    );
}

#[test]
fn readme_recipe_restores_a_pg17_custom_backup_exactly() {
    recipe("rec17c", &common::postgres_image(), &[], 1);
}

#[test]
fn readme_recipe_restores_a_pg17_plain_backup_exactly() {
    recipe(
        "rec17p",
        &common::postgres_image(),
        &[("pgbackup.format", "plain")],
        2,
    );
}

/// The sidecar's pg_dump 18 writes what Postgres 13 rejects (`LOCALE_PROVIDER`,
/// `transaction_timeout`): the plain backup is adapted when written, the custom one by the
/// README's `sed`.
#[test]
fn readme_recipe_restores_a_pg13_connect_plain_backup_into_pg13_exactly() {
    recipe(
        "rec13p",
        &common::postgres_image_of(13),
        &[("pgbackup.format", "plain"), ("pgbackup.method", "connect")],
        2,
    );
}

#[test]
fn readme_recipe_restores_a_pg13_connect_custom_backup_into_pg13_exactly() {
    recipe(
        "rec13c",
        &common::postgres_image_of(13),
        &[("pgbackup.method", "connect")],
        3,
    );
}

#[test]
fn readme_recipe_restores_a_pg15_exec_custom_backup_into_pg15_exactly() {
    let pg15 = common::postgres15_image();
    recipe("rec15e", &pg15, &[], 1);
}

/// README "Encryption": the key made as the README says (`age-keygen -o key.txt`), a backup
/// encrypted to its public key, and the "Encrypted backups with standard tools" block run as
/// written (its example folder and database object replaced by real ones): `aws s3 cp`,
/// `sha256sum -c` on the encrypted objects, `age -d | zstd -d | psql / pg_restore`. A connect
/// backup's databases go through the sidecar's pg_restore as "With standard tools only" says,
/// with `age -d` first.
fn encrypted_recipe(prefix: &str, labels: &[(&str, &str)]) {
    let s = stack!();
    let image = common::postgres_image();
    let p = Project::new(&s, &image);
    let keygen = common::readme_blocks("Encryption", "sh");
    assert_eq!(
        keygen.len(),
        2,
        "the README's Encryption section changed: {keygen:#?}"
    );
    p.sh(&s, &keygen[0]);
    let key = std::fs::read_to_string(p.dir.join("key.txt")).unwrap();
    let public = key
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .expect("age-keygen writes the public key")
        .to_string();
    let mut all = vec![("pgbackup.age_recipients", public.as_str())];
    all.extend_from_slice(labels);
    let src = source_as(&s, prefix, &image, "app", &all);
    let _c = Cleanup(src.clone());
    let before = fingerprint(&src, "app");
    let m = backup_manifest(&s, &src);
    assert_eq!(m["encryption"]["recipients"], serde_json::json!([public]));
    let folder = format!("s3://pgbackup/{}", m["prefix"].as_str().unwrap());

    let blocks = readme_blocks("Encrypted backups with standard tools");
    assert_eq!(blocks.len(), 1, "{blocks:#?}");
    let example = example_folder(&blocks[0]);
    let per_db = "restore/app.dump.zst.age";
    let (once, each): (Vec<&str>, Vec<&str>) = blocks[0].lines().partition(|l| !l.contains(per_db));
    assert_eq!(each.len(), 1, "{blocks:#?}");
    let out = p.sh(&s, &once.join("\n").replace(&example, &folder));
    assert!(
        out.contains(".age: OK"),
        "sha256sum -c checks the encrypted objects: {out}"
    );
    let connect = labels.contains(&("pgbackup.method", "connect"));
    for o in m["objects"].as_array().unwrap() {
        if o["kind"] != "database" || o["database"] == "postgres" || o["database"] == "app" {
            continue;
        }
        let name = format!("restore/{}", o["name"].as_str().unwrap());
        let line = if connect {
            let plain = &readme_blocks("With standard tools only")[3];
            assert!(
                plain.starts_with("zstd -dc restore/app.dump.zst |"),
                "{plain}"
            );
            plain.replace(
                "zstd -dc restore/app.dump.zst",
                &format!("age -d -i key.txt {name} | zstd -d"),
            )
        } else {
            each[0].replace(per_db, &name)
        };
        p.sh(&s, &line);
    }
    assert_restored(
        &before,
        &fingerprint(&p.db(), "app"),
        &[ODD, "globals", SHOP],
        &format!("README encrypted recipe for {prefix}"),
    );
}

#[test]
fn readme_recipe_restores_an_encrypted_exec_backup_with_age_and_zstd() {
    encrypted_recipe("recence", &[]);
}

#[test]
fn readme_recipe_restores_an_encrypted_connect_backup_with_age_and_zstd() {
    encrypted_recipe("rencc", &[("pgbackup.method", "connect")]);
}
