//! pgbackup: backup and restore sidecar for Postgres in Docker Compose.
//!
//! Laid out as a backup flows (README "Architecture"): `model` is the shared vocabulary;
//! `config`, `discovery`, `schedule` decide what and when; `job` runs backups through the
//! `pipeline` into the `store`; `retention` and `restore` read them back. Only `store` talks to
//! S3 and only `engine` to Docker; `app` wires everything together.

pub mod app;
pub mod config;
pub mod discovery;
pub mod engine;
pub mod job;
pub mod model;
pub mod notify;
pub mod pipeline;
pub mod restore;
pub mod retention;
pub mod schedule;
pub mod store;
pub mod table;

/// Documented exit codes (README "Exit codes").
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// The operation itself failed.
    pub const FAILED: i32 = 1;
    /// Bad command line or configuration (a variable missing or malformed).
    pub const USAGE: i32 = 2;
    /// A dependency refused or could not be reached at start-up (Docker daemon, S3 bucket).
    pub const UNAVAILABLE: i32 = 3;
    /// Refused before changing anything: a restore over existing data without `--clean`, an
    /// incompatible Postgres version.
    pub const REFUSED: i32 = 4;
}

/// An HTTP client builder whose TLS is rustls with ring (the crypto provider installed for the
/// process on first use): notifications, pings and the CLI's calls to the controller.
pub fn http_client() -> reqwest::ClientBuilder {
    static RING: std::sync::Once = std::sync::Once::new();
    RING.call_once(|| {
        // Another provider installed first is as good; only "none at all" would be an error.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder()
}
