//! End-to-end: `docker compose stop` while a backup runs. The sidecar cancels the job, removes
//! what it wrote (objects and the open multipart upload), logs the failure and exits 0 within
//! compose.yaml's `stop_grace_period`, instead of being killed with a 400 MiB upload left open.
//! Alone in its own test binary because it stops the stack's sidecar.

mod common;

use std::time::{Duration, Instant};

use common::{stderr, stdout, wait_until};

#[test]
fn sigterm_mid_backup_cancels_the_job_cleans_up_and_logs_the_failure() {
    let s = stack!();
    let (name, _g) = s.big_target("sigterm");

    let sidecar = s.container("backup");
    let (c, n2) = (sidecar.clone(), name.clone());
    let client = std::thread::spawn(move || {
        common::run(std::process::Command::new("docker").args(["exec", &c, "pgctl", "backup", &n2]))
    });
    wait_until(Duration::from_secs(20), || {
        s.target(&name).filter(|t| t["run"]["running"].is_object())
    })
    .expect("the backup started");
    std::thread::sleep(Duration::from_millis(1500));
    let cfg = common::s3_config(&s);
    let uploads_before = common::open_uploads(&cfg);
    assert!(
        uploads_before
            .iter()
            .any(|u| u.starts_with(&format!("{name}/"))),
        "a multipart upload is under way: {uploads_before:?}"
    );

    let since = chrono::Utc::now().to_rfc3339();
    let t = Instant::now();
    let o = s.compose(&["stop", "backup"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let took = t.elapsed();
    let _ = client.join();
    let code = common::docker(&["inspect", "-f", "{{.State.ExitCode}}", &sidecar]);
    let logs = stdout(&s.compose(&["logs", "--no-color", "--since", &since, "backup"]));

    // Restart the sidecar for the other tests whatever happens below.
    let o = s.compose(&["start", "backup"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let back = wait_until(Duration::from_secs(60), || {
        s.pgctl(&["status", "--json"])
            .status
            .success()
            .then_some(())
    });

    assert_eq!(
        code, "0",
        "the sidecar exited by itself, not killed: {logs}"
    );
    assert!(took < Duration::from_secs(50), "stopping took {took:?}");
    assert!(
        logs.contains("cancelled") && logs.contains("Backup failed"),
        "the failure is logged: {logs}"
    );
    let keys = common::keys(&cfg, &format!("{name}/"));
    assert!(keys.is_empty(), "objects left: {keys:?}");
    let left: Vec<String> = common::open_uploads(&cfg)
        .into_iter()
        .filter(|u| u.starts_with(&format!("{name}/")))
        .collect();
    assert!(
        left.is_empty(),
        "open uploads left: {left:?} (before the stop: {uploads_before:?})"
    );
    assert!(back.is_some(), "the sidecar came back");
}
