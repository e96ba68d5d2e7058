//! End-to-end: physical base backups. `pgctl backup --physical` streams `pg_basebackup` (tar,
//! WAL fetched, the server's `backup_manifest` inside) from the target into S3; the stored backup
//! unpacks with standard tools into a new volume on which the same image starts with the data
//! as it was at backup time.

mod common;

use std::time::Duration;

use common::{Cleanup, docker, psql, sh, stderr, stdout, unique, wait_until};

/// Removes a volume when dropped.
struct VolumeCleanup(String);

impl Drop for VolumeCleanup {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["volume", "rm", "-f", &self.0])
            .output();
    }
}

#[test]
fn physical_backup_unpacks_into_a_new_volume_and_starts() {
    let s = stack!();
    let name = unique("phys");
    let _c = Cleanup(name.clone());
    s.start_pg(
        &name,
        &[("pgbackup.enable", "true"), ("pgbackup.schedule", "off")],
    );
    psql(
        &name,
        "postgres",
        "postgres",
        "CREATE TABLE t AS SELECT g, md5(g::text) AS h FROM generate_series(1, 50000) g",
    );
    let digest = "SELECT count(*), md5(string_agg(h, ',' ORDER BY g)) FROM t";
    let want = psql(&name, "postgres", "postgres", digest);
    wait_until(Duration::from_secs(10), || s.target(&name)).expect("discovered");

    let o = s.pgctl(&["backup", "--physical", "--wait", &name]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let m = s
        .list(&name)
        .into_iter()
        .find(|m| m["kind"] == "physical")
        .expect("the physical backup is listed");
    assert!(m["backup_id"].as_str().unwrap().ends_with("-physical"));
    assert_eq!(m["postgres"]["major"], 17);
    assert_eq!(m["format"], "tar");
    assert_eq!(
        m["physical"]["system_identifier"].as_str().unwrap(),
        psql(
            &name,
            "postgres",
            "postgres",
            "SELECT system_identifier FROM pg_control_system()"
        )
    );
    assert_eq!(
        m["physical"]["data_directory"].as_str().unwrap(),
        psql(&name, "postgres", "postgres", "SHOW data_directory")
    );
    // Changed after the backup: the restored copy must not have this.
    psql(&name, "postgres", "postgres", "DELETE FROM t WHERE g > 100");

    let cfg = common::s3_config(&s);
    let dir = tempfile::tempdir().unwrap();
    let names = common::download(&cfg, m["prefix"].as_str().unwrap(), dir.path());
    assert!(names.contains(&"base.tar.zst".to_string()), "{names:?}");
    let d = dir.path().display();
    sh(&format!("cd {d} && sha256sum -c --strict SHA256SUMS"));
    let listing = sh(&format!("zstd -dc {d}/base.tar.zst | tar -t"));
    for entry in ["backup_manifest", "PG_VERSION", "global/pg_control"] {
        assert!(listing.lines().any(|l| l == entry), "{entry} in the tar");
    }
    assert!(
        listing.lines().any(|l| l.starts_with("pg_wal/0000")),
        "WAL in the tar"
    );

    // Standard tools only: unpack into a new volume as the image's postgres user, start on it.
    let image = common::postgres_image();
    let vol = unique("physvol");
    let _v = VolumeCleanup(vol.clone());
    docker(&["volume", "create", &vol]);
    sh(&format!(
        "zstd -dc {d}/base.tar.zst | docker run --rm -i --user root --entrypoint sh -v {vol}:/restore {image} \
         -c 'tar -x -C /restore && chown -R postgres:postgres /restore && chmod 700 /restore'"
    ));
    let restored = unique("physrestored");
    let _r = Cleanup(restored.clone());
    s.start_image(
        &restored,
        &image,
        &[],
        &["-v", &format!("{vol}:/var/lib/postgresql/data")],
    );
    common::wait_ready(&restored);
    assert_eq!(psql(&restored, "postgres", "postgres", digest), want);
    assert_eq!(
        psql(
            &restored,
            "postgres",
            "postgres",
            "SELECT system_identifier FROM pg_control_system()"
        ),
        m["physical"]["system_identifier"].as_str().unwrap()
    );
}
