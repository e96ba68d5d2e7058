//! End-to-end: Garage stops in the middle of an upload, or stops answering (paused). The backup
//! fails with the reason, nothing is listed, the multipart upload is aborted once Garage is back,
//! and the next backup works; nothing waits forever, and SIGTERM is honoured meanwhile.
//! Alone in its own test binary because it takes S3 away from everything else; the tests here
//! take turns.

mod common;

use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{psql, stderr, stdout, wait_until};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Unpauses Garage when dropped, so a failing assertion does not leave S3 frozen.
struct Unpause(String);

impl Drop for Unpause {
    fn drop(&mut self) {
        let _ = common::run(std::process::Command::new("docker").args(["unpause", &self.0]));
    }
}

#[test]
fn garage_not_answering_fails_in_bounded_time_and_sigterm_is_honoured() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let s = stack!();
    let garage = s.container("garage");
    let cmd = |args: &[&str]| {
        let mut c = s.host_pgctl_cmd(args);
        c.env("PGBACKUP_HTTP_ADDR", "off").env("S3_TIMEOUT", "5s");
        c
    };
    common::docker(&["pause", &garage]);
    let _unpause = Unpause(garage.clone());

    // The controller's start-up check: exit 3 after its 30 s patience, naming the endpoint.
    let t = Instant::now();
    let o = common::run(&mut cmd(&["run"]));
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        t.elapsed() < Duration::from_secs(45),
        "took {:?}",
        t.elapsed()
    );
    assert!(stderr(&o).contains("cannot reach S3"), "{}", stderr(&o));

    // SIGTERM during that wait: it stops at once.
    let mut child = cmd(&["run"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let o =
        common::run(std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]));
    assert!(o.status.success());
    let t = Instant::now();
    let status = wait_until(Duration::from_secs(10), || child.try_wait().unwrap());
    assert!(
        status.is_some(),
        "pgctl run ignored SIGTERM while S3 did not answer"
    );
    assert_eq!(status.unwrap().code(), Some(0));
    assert!(t.elapsed() < Duration::from_secs(10));

    // A command gives up after S3_TIMEOUT per attempt instead of hanging.
    let t = Instant::now();
    let o = common::run(&mut cmd(&["list"]));
    assert!(!o.status.success(), "{}", stdout(&o));
    assert!(stderr(&o).contains("S3_TIMEOUT"), "{}", stderr(&o));
    assert!(
        t.elapsed() < Duration::from_secs(60),
        "took {:?}",
        t.elapsed()
    );

    // The running controller's /healthz says so.
    let unhealthy = wait_until(Duration::from_secs(90), || {
        let body = healthz(&s);
        body.contains("s3:").then_some(body)
    });
    assert!(unhealthy.is_some(), "/healthz never reported S3");
}

/// The stack's sidecar's `/healthz` body.
fn healthz(s: &common::Stack) -> String {
    let o = common::run(std::process::Command::new("docker").args([
        "exec",
        &s.container("backup"),
        "curl",
        "-sS",
        "http://127.0.0.1:8080/healthz",
    ]));
    stdout(&o) + &stderr(&o)
}

#[test]
fn garage_stopped_mid_upload_leaves_nothing_behind() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let s = stack!();
    let (name, _g) = s.big_target("s3down");

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
