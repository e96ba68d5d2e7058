#[test]
fn own_container_id_from_mountinfo() {
    let id = "4f1c".repeat(16);
    let mounts = format!(
        "612 590 0:52 / / rw,relatime - overlay overlay rw\n\
         630 612 254:1 /var/lib/docker/containers/{id}/resolv.conf /etc/resolv.conf rw - ext4 /dev/vda1 rw\n\
         631 612 254:1 /var/lib/docker/containers/{id}/hostname /etc/hostname rw - ext4 /dev/vda1 rw\n"
    );
    assert_eq!(super::container_id_in_mountinfo(&mounts), Some(id.as_str()));
    assert_eq!(
        super::container_id_in_mountinfo("612 590 0:52 / / rw - overlay"),
        None
    );
}

use super::*;

fn api(status_code: u16) -> DockerError {
    DockerError::Api {
        call: "start_exec",
        source: bollard::errors::Error::DockerResponseServerError {
            status_code,
            message: "x".into(),
        },
    }
}

#[test]
fn transient_docker_errors() {
    assert!(api(500).is_transient(), "daemon error");
    assert!(api(503).is_transient());
    assert!(!api(404).is_transient(), "container gone");
    assert!(!api(409).is_transient(), "container not running");
    assert!(!api(400).is_transient());
    assert!(
        DockerError::Timeout {
            call: "create_exec"
        }
        .is_transient()
    );
    let io = DockerError::Api {
        call: "create_exec",
        source: std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset").into(),
    };
    assert!(io.is_transient(), "connection reset");
}
