//! The SDK client for AWS and S3-compatibles (region, credentials, checksums only when
//! required, path style), its time limits, and errors turned into sentences that name what to
//! fix.

use super::*;

pub(super) fn to_utc(t: &aws_sdk_s3::primitives::DateTime) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.secs(), t.subsec_nanos())
}

pub(super) async fn client(cfg: &S3Config) -> Client {
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(https());
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

/// The SDK's HTTP client: rustls with ring (see Cargo.toml), the system's CA roots.
fn https() -> aws_sdk_s3::config::SharedHttpClient {
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https()
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

pub(crate) fn endpoint_of(cfg: &S3Config) -> String {
    cfg.endpoint.clone().unwrap_or_else(|| "AWS S3".to_string())
}

/// Whether a server error's message says the disk or quota is full (Garage and MinIO pass the
/// OS error through: "No space left on device (os error 28)", "Storage reached its minimum free
/// drive threshold").
pub(super) fn mentions_space(message: &str) -> bool {
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
) -> StoreError {
    let endpoint = endpoint_of(cfg);
    match err {
        SdkError::DispatchFailure(d) => StoreError::Unreachable {
            endpoint,
            reason: if d.is_timeout() {
                "connection timed out".into()
            } else if d.is_io() {
                "connection failed".into()
            } else {
                format!("{d:?}")
            },
        },
        SdkError::TimeoutError(_) => StoreError::Timeout {
            endpoint,
            timeout: humantime::format_duration(cfg.timeout).to_string(),
        },
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let code = se.err().code().unwrap_or("");
            match (status, code) {
                (403, _) | (401, _) | (_, "InvalidAccessKeyId") | (_, "SignatureDoesNotMatch") => {
                    StoreError::AccessDenied {
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
                (_, "NoSuchBucket") => StoreError::NoSuchBucket {
                    bucket: cfg.bucket.clone(),
                    endpoint,
                },
                (_, "NoSuchKey") | (_, "NotFound") => StoreError::NotFound {
                    op,
                    location: format!("s3://{}", cfg.bucket),
                },
                // A HEAD has no body, so no code: only HeadBucket's 404 means the bucket.
                (404, _) if op == "HeadBucket" => StoreError::NoSuchBucket {
                    bucket: cfg.bucket.clone(),
                    endpoint,
                },
                (404, _) => StoreError::NotFound {
                    op,
                    location: format!("s3://{}", cfg.bucket),
                },
                (507, _) | (_, "EntityTooLarge") | (_, "QuotaExceeded") | (_, "NotEnoughSpace") => {
                    StoreError::NoSpace {
                        endpoint,
                        reason: format!(
                            "HTTP {status} {code} {}",
                            se.err().message().unwrap_or_default()
                        ),
                    }
                }
                (s, _) if s >= 500 && mentions_space(se.err().message().unwrap_or_default()) => {
                    StoreError::NoSpace {
                        endpoint,
                        reason: format!(
                            "HTTP {s} {code} {}",
                            se.err().message().unwrap_or_default()
                        ),
                    }
                }
                (s, _) if s >= 500 => StoreError::Unreachable {
                    endpoint,
                    reason: format!("server error HTTP {s} {code}"),
                },
                (s @ (301 | 400), c) => StoreError::Other {
                    op,
                    location: format!("s3://{}", cfg.bucket),
                    reason: format!(
                        "HTTP {s} {c} {}; the endpoint rejected the request itself: check S3_REGION{} and S3_ENDPOINT ({endpoint}), and S3_FORCE_PATH_STYLE",
                        se.err().message().unwrap_or_default(),
                        cfg.region
                            .as_deref()
                            .map(|r| format!(" (now {r})"))
                            .unwrap_or_default(),
                    ),
                },
                (s, c) => StoreError::Other {
                    op,
                    location: format!("s3://{}", cfg.bucket),
                    reason: format!("HTTP {s} {c} {}", se.err().message().unwrap_or_default()),
                },
            }
        }
        other => StoreError::Other {
            op,
            location: format!("s3://{}", cfg.bucket),
            reason: format!("{other}"),
        },
    }
}
