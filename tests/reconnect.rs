//! End-to-end: the controller survives losing its Docker connection. A controller runs on the
//! host with DOCKER_HOST pointing at a TCP proxy in front of the real Docker socket; the test cuts
//! the proxy, checks the controller reports itself disconnected, starts a labelled container
//! during the outage, restores the proxy and checks the container is discovered after the
//! reconnect. The S3 side is the stack's real Garage (published on a loopback port).

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use common::{Cleanup, stdout, unique, wait_until};
use serde_json::Value;

/// A TCP → Docker-socket proxy that can be cut (listener closed, live connections reset).
struct Proxy {
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<(TcpStream, UnixStream)>>>,
    accept: Option<JoinHandle<()>>,
}

fn pipe(mut from: impl Read + Send + 'static, mut to: impl Write + Send + 'static) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
    });
}

impl Proxy {
    fn start(port: u16) -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind proxy port");
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<(TcpStream, UnixStream)>>> = Arc::default();
        let (s, c) = (stop.clone(), conns.clone());
        let accept = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((tcp, _)) => {
                        tcp.set_nonblocking(false).unwrap();
                        let unix =
                            UnixStream::connect("/var/run/docker.sock").expect("docker socket");
                        c.lock()
                            .unwrap()
                            .push((tcp.try_clone().unwrap(), unix.try_clone().unwrap()));
                        pipe(tcp.try_clone().unwrap(), unix.try_clone().unwrap());
                        pipe(unix, tcp);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Proxy {
            stop,
            conns,
            accept: Some(accept),
        }
    }

    fn cut(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.accept.take().unwrap().join().unwrap();
        for (t, u) in self.conns.lock().unwrap().drain(..) {
            let _ = t.shutdown(Shutdown::Both);
            let _ = u.shutdown(Shutdown::Both);
        }
    }
}

fn status(url: &str) -> Option<Value> {
    let o = common::host_pgctl(&["status", "--json", "--controller", url]);
    let v: Value = serde_json::from_slice(&o.stdout).ok()?;
    (v["source"] == "controller").then_some(v)
}

fn listed(v: &Value, name: &str) -> bool {
    v["targets"]
        .as_array()
        .is_some_and(|a| a.iter().any(|t| t["target"] == name))
}

#[test]
fn controller_reconnects_after_losing_the_docker_daemon() {
    let s = stack!();
    let docker_port = common::free_port();
    let proxy = Proxy::start(docker_port);
    let mut child = s.host_controller(&[
        ("DOCKER_HOST", format!("tcp://127.0.0.1:{docker_port}")),
        ("PGBACKUP_RESYNC_INTERVAL", "2s".into()),
    ]);
    let url = child.url.clone();

    let db = format!("{}/db", s.project);
    let up = wait_until(Duration::from_secs(30), || {
        status(&url).filter(|v| v["docker"]["connected"] == true && listed(v, &db))
    });
    assert!(
        up.is_some(),
        "the host controller lists {db} through the proxy"
    );

    proxy.cut();
    let down = wait_until(Duration::from_secs(10), || {
        status(&url).filter(|v| v["docker"]["connected"] == false)
    })
    .expect("the controller notices the lost connection");
    assert!(
        down["docker"]["last_error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{down}"
    );
    let health = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("{url}/healthz"),
        ])
        .output()
        .map(|o| stdout(&o));
    if let Ok(code) = health {
        assert_eq!(code.trim(), "503", "healthz reports the outage");
    }

    // A container that starts while the controller is blind...
    let name = unique("during-outage");
    let _guard = Cleanup(name.clone());
    s.start_container(&name, &[("pgbackup.enable", "true")]);
    std::thread::sleep(Duration::from_secs(2));

    // ...is found once the daemon is reachable again (backoff is still short here).
    let _proxy = Proxy::start(docker_port);
    let back = wait_until(Duration::from_secs(30), || {
        status(&url).filter(|v| v["docker"]["connected"] == true && listed(v, &name))
    });
    assert!(
        back.is_some(),
        "after reconnecting, the container started during the outage is listed"
    );

    // SIGTERM: a clean stop with exit code 0.
    let pid = child.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let code = wait_until(Duration::from_secs(15), || {
        child.child.try_wait().ok().flatten()
    })
    .expect("the controller stops on SIGTERM");
    let log = child.log();
    assert!(code.success(), "exit status {code:?}; log:\n{log}");
    assert!(log.contains("Reconnected to the Docker daemon"), "{log}");
    assert!(
        !log.contains("9ee5125902ef55aa"),
        "the secret never reaches the log"
    );
}
