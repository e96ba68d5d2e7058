//! S3 client set-up for AWS and S3-compatibles (Garage, MinIO, B2, R2).

use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

use crate::config::S3Config;

#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    #[error(
        "S3 refused access to bucket {bucket:?} at {endpoint} (HTTP {status}): check S3_ACCESS_KEY_ID / S3_SECRET_ACCESS_KEY{key} and that the key may read and write this bucket"
    )]
    AccessDenied {
        bucket: String,
        endpoint: String,
        status: u16,
        key: String,
    },
    #[error("bucket {bucket:?} does not exist at {endpoint}: create it or fix S3_BUCKET")]
    NoSuchBucket { bucket: String, endpoint: String },
    #[error("S3 request {op} on bucket {bucket:?}: no such object")]
    NotFound { op: &'static str, bucket: String },
    #[error(
        "the storage at {endpoint} refused the write for lack of space ({reason}): free space or raise the quota, then run the backup again"
    )]
    NoSpace { endpoint: String, reason: String },
    #[error(
        "cannot reach S3 at {endpoint}: no answer within S3_TIMEOUT ({timeout}); check S3_ENDPOINT and the network"
    )]
    Timeout { endpoint: String, timeout: String },
    #[error(
        "the storage at {endpoint} answers but did not accept the write of {key} within S3_TIMEOUT ({timeout}): it may be out of space or over quota; check its free space, then run the backup again"
    )]
    WriteStalled {
        endpoint: String,
        key: String,
        timeout: String,
    },
    #[error("cannot reach S3 at {endpoint}: {reason}; check S3_ENDPOINT and the network")]
    Unreachable { endpoint: String, reason: String },
    #[error("S3 request {op} on bucket {bucket:?} failed: {reason}")]
    Other {
        op: &'static str,
        bucket: String,
        reason: String,
    },
}

impl S3Error {
    /// Transient errors are worth retrying; a refusal or a missing bucket is not.
    pub fn is_transient(&self) -> bool {
        matches!(self, S3Error::Unreachable { .. } | S3Error::Timeout { .. })
    }

    /// After a write of `key` timed out: if the bucket still answers, the endpoint is up but did
    /// not take the write — what a full disk looks like on some stores (Garage waits instead of
    /// answering). Other errors are returned as they are.
    pub async fn diagnose_write(self, client: &Client, cfg: &S3Config, key: &str) -> S3Error {
        let S3Error::Timeout { endpoint, timeout } = self else {
            return self;
        };
        let probe = client
            .head_bucket()
            .bucket(&cfg.bucket)
            .customize()
            .config_override(
                aws_sdk_s3::config::Builder::new()
                    .timeout_config(timeouts(cfg.timeout.min(Duration::from_secs(5))))
                    .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled()),
            )
            .send()
            .await;
        match probe {
            Ok(_) => S3Error::WriteStalled {
                endpoint,
                key: key.to_string(),
                timeout,
            },
            Err(_) => S3Error::Timeout { endpoint, timeout },
        }
    }
}

pub async fn client(cfg: &S3Config) -> Client {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    match (&cfg.region, &cfg.endpoint) {
        (Some(r), _) => loader = loader.region(Region::new(r.clone())),
        // S3-compatibles rarely care about the region but SigV4 needs one.
        (None, Some(_)) => loader = loader.region(Region::new("us-east-1")),
        (None, None) => {}
    }
    if let Some((id, secret)) = &cfg.credentials {
        loader = loader.credentials_provider(Credentials::new(
            id,
            secret.expose(),
            None,
            None,
            "pgbackup-environment",
        ));
    }
    let shared = loader.load().await;
    // Many S3-compatibles reject the SDK's default CRC checksums (headers and trailers they do
    // not know): send and verify them only where the operation requires it.
    let mut b = aws_sdk_s3::config::Builder::from(&shared)
        .timeout_config(timeouts(cfg.timeout))
        .force_path_style(cfg.force_path_style)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
    if let Some(e) = &cfg.endpoint {
        b = b.endpoint_url(e);
    }
    Client::from_conf(b.build())
}

/// A part upload may take `S3_TIMEOUT` per this many bytes of its body (at least one unit).
pub const TIMEOUT_UNIT: u64 = 32 << 20;

/// Per-attempt limits: connecting, and the whole attempt (the SDK retries a timed-out attempt
/// like any transient failure, three attempts in all).
pub fn timeouts(per_attempt: Duration) -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(per_attempt.min(Duration::from_secs(10)))
        .operation_attempt_timeout(per_attempt)
        .build()
}

/// The attempt limit for a request carrying `bytes` of body: `S3_TIMEOUT` per
/// [`TIMEOUT_UNIT`], so a 64 MiB part on a slow uplink is not cut off while a stalled endpoint
/// still is.
pub fn upload_timeouts(per_attempt: Duration, bytes: u64) -> TimeoutConfig {
    let units = bytes.div_ceil(TIMEOUT_UNIT).max(1) as u32;
    timeouts(per_attempt * units)
}

fn endpoint_of(cfg: &S3Config) -> String {
    cfg.endpoint.clone().unwrap_or_else(|| "AWS S3".to_string())
}

/// Whether a server error's message says the disk or quota is full (Garage and MinIO pass the
/// OS error through: "No space left on device (os error 28)", "Storage reached its minimum free
/// drive threshold").
fn mentions_space(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "no space",
        "os error 28",
        "enospc",
        "free drive",
        "disk full",
        "quota",
    ]
    .iter()
    .any(|s| m.contains(s))
}

/// Turns an SDK error into a sentence naming what to fix. Never includes credentials.
pub fn classify<E: ProvideErrorMetadata + std::fmt::Debug>(
    cfg: &S3Config,
    op: &'static str,
    err: &SdkError<E>,
) -> S3Error {
    let endpoint = endpoint_of(cfg);
    match err {
        SdkError::DispatchFailure(d) => S3Error::Unreachable {
            endpoint,
            reason: if d.is_timeout() {
                "connection timed out".into()
            } else if d.is_io() {
                "connection failed".into()
            } else {
                format!("{d:?}")
            },
        },
        SdkError::TimeoutError(_) => S3Error::Timeout {
            endpoint,
            timeout: humantime::format_duration(cfg.timeout).to_string(),
        },
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let code = se.err().code().unwrap_or("");
            match (status, code) {
                (403, _) | (401, _) | (_, "InvalidAccessKeyId") | (_, "SignatureDoesNotMatch") => {
                    S3Error::AccessDenied {
                        bucket: cfg.bucket.clone(),
                        endpoint,
                        status,
                        key: cfg
                            .credentials
                            .as_ref()
                            .map(|(id, _)| format!(" (key id {id})"))
                            .unwrap_or_default(),
                    }
                }
                (_, "NoSuchBucket") => S3Error::NoSuchBucket {
                    bucket: cfg.bucket.clone(),
                    endpoint,
                },
                (_, "NoSuchKey") | (_, "NotFound") => S3Error::NotFound {
                    op,
                    bucket: cfg.bucket.clone(),
                },
                // A HEAD has no body, so no code: only HeadBucket's 404 means the bucket.
                (404, _) if op == "HeadBucket" => S3Error::NoSuchBucket {
                    bucket: cfg.bucket.clone(),
                    endpoint,
                },
                (404, _) => S3Error::NotFound {
                    op,
                    bucket: cfg.bucket.clone(),
                },
                (507, _) | (_, "EntityTooLarge") | (_, "QuotaExceeded") | (_, "NotEnoughSpace") => {
                    S3Error::NoSpace {
                        endpoint,
                        reason: format!(
                            "HTTP {status} {code} {}",
                            se.err().message().unwrap_or_default()
                        ),
                    }
                }
                (s, _) if s >= 500 && mentions_space(se.err().message().unwrap_or_default()) => {
                    S3Error::NoSpace {
                        endpoint,
                        reason: format!(
                            "HTTP {s} {code} {}",
                            se.err().message().unwrap_or_default()
                        ),
                    }
                }
                (s, _) if s >= 500 => S3Error::Unreachable {
                    endpoint,
                    reason: format!("server error HTTP {s} {code}"),
                },
                (s @ (301 | 400), c) => S3Error::Other {
                    op,
                    bucket: cfg.bucket.clone(),
                    reason: format!(
                        "HTTP {s} {c} {}; the endpoint rejected the request itself: check S3_REGION{} and S3_ENDPOINT ({endpoint}), and S3_FORCE_PATH_STYLE",
                        se.err().message().unwrap_or_default(),
                        cfg.region
                            .as_deref()
                            .map(|r| format!(" (now {r})"))
                            .unwrap_or_default(),
                    ),
                },
                (s, c) => S3Error::Other {
                    op,
                    bucket: cfg.bucket.clone(),
                    reason: format!("HTTP {s} {c} {}", se.err().message().unwrap_or_default()),
                },
            }
        }
        other => S3Error::Other {
            op,
            bucket: cfg.bucket.clone(),
            reason: format!("{other}"),
        },
    }
}

/// Checks that the bucket exists and the credentials may use it. Transient failures (the
/// endpoint still starting) are retried for up to `patience`.
pub async fn check_bucket(
    client: &Client,
    cfg: &S3Config,
    patience: Duration,
) -> Result<(), S3Error> {
    let deadline = tokio::time::Instant::now() + patience;
    let waited = tokio::time::timeout(patience, check_until(client, cfg, deadline)).await;
    waited.unwrap_or_else(|_| {
        Err(S3Error::Unreachable {
            endpoint: endpoint_of(cfg),
            reason: format!("no answer within {}", humantime::format_duration(patience)),
        })
    })
}

async fn check_until(
    client: &Client,
    cfg: &S3Config,
    deadline: tokio::time::Instant,
) -> Result<(), S3Error> {
    let mut delay = Duration::from_millis(500);
    loop {
        let res = client.head_bucket().bucket(&cfg.bucket).send().await;
        let err = match res {
            Ok(_) => return Ok(()),
            Err(e) => classify(cfg, "HeadBucket", &e),
        };
        if !err.is_transient() || tokio::time::Instant::now() + delay > deadline {
            return Err(err);
        }
        tracing::warn!(error = %err, retry_in = ?delay, "S3 not reachable yet; retrying.");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}
