//! S3 client set-up for AWS and S3-compatibles (Garage, MinIO, B2, R2).

use std::time::Duration;

use aws_sdk_s3::Client;
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
        matches!(self, S3Error::Unreachable { .. })
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
        .force_path_style(cfg.force_path_style)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
    if let Some(e) = &cfg.endpoint {
        b = b.endpoint_url(e);
    }
    Client::from_conf(b.build())
}

fn endpoint_of(cfg: &S3Config) -> String {
    cfg.endpoint.clone().unwrap_or_else(|| "AWS S3".to_string())
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
        SdkError::TimeoutError(_) => S3Error::Unreachable {
            endpoint,
            reason: "request timed out".into(),
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
                (404, _) | (_, "NoSuchBucket") => S3Error::NoSuchBucket {
                    bucket: cfg.bucket.clone(),
                    endpoint,
                },
                (s, _) if s >= 500 => S3Error::Unreachable {
                    endpoint,
                    reason: format!("server error HTTP {s} {code}"),
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
