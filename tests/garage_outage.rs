//! End-to-end: Garage stops in the middle of an upload. The backup fails with the reason, nothing
//! is listed, the multipart upload is aborted once Garage is back, and the next backup works.
//! Alone in its own test binary because it takes S3 away from everything else.

mod common;

use std::time::Duration;

use common::{Cleanup, psql, stderr, stdout, unique, wait_until};

#[test]
fn garage_stopped_mid_upload_leaves_nothing_behind() {
    let s = stack!();
    let name = unique("s3down");
    let _g = Cleanup(name.clone());
    s.start_pg(
        &name,
        &[
            ("pgbackup.enable", "true"),
            ("pgbackup.compression", "none"),
            ("pgbackup.globals", "false"),
        ],
    );
    psql(&name, "postgres", "postgres", common::BIG_TABLE);
    wait_until(Duration::from_secs(5), || s.target(&name)).expect("listed");

    let c = s.container("backup");
    let n2 = name.clone();
    let backup = std::thread::spawn(move || {
        common::run(std::process::Command::new("docker").args(["exec", &c, "pgctl", "backup", &n2]))
    });
    wait_until(Duration::from_secs(20), || {
        s.target(&name).filter(|t| t["run"]["running"].is_object())
    })
    .expect("the backup started");
    std::thread::sleep(Duration::from_millis(1500));
    let o = s.compose(&["stop", "-t", "1", "garage"]);
    assert!(o.status.success(), "{}", stderr(&o));
    std::thread::sleep(Duration::from_secs(4));
    let o = s.compose(&["start", "garage"]);
    assert!(o.status.success(), "{}", stderr(&o));

    let o = backup.join().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("FAILED"), "{}", stdout(&o));

    // Garage answers again: nothing listed, no upload left open.
    let back = wait_until(Duration::from_secs(60), || {
        let o = s.pgctl(&["list", &name, "--json"]);
        o.status.success().then(|| stdout(&o))
    })
    .expect("S3 reachable again");
    assert_eq!(back.trim(), "[]", "a failed backup is never listed");
    // Garage's published port changes with the restart: read it again.
    let cfg = common::s3_config(&s);
    let clean = wait_until(Duration::from_secs(90), || {
        common::open_uploads(&cfg).is_empty().then_some(())
    });
    assert!(
        clean.is_some(),
        "open multipart uploads left: {:?}",
        common::open_uploads(&cfg)
    );

    // The controller carries on.
    psql(&name, "postgres", "postgres", "DROP TABLE big");
    let o = s.pgctl(&["backup", "--wait", &name]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(s.list(&name).len(), 1);
}
