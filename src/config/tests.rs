use super::*;
use rstest::rstest;

fn s3(cfg: &Config) -> &S3Config {
    cfg.destination.s3().expect("an S3 destination")
}

fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn minimal_config_uses_documented_defaults() {
    let cfg = Config::from_map(&map(&[("S3_BUCKET", "backups")])).unwrap();
    assert_eq!(s3(&cfg).bucket, "backups");
    assert_eq!(s3(&cfg).endpoint, None);
    assert!(!s3(&cfg).force_path_style);
    assert_eq!(s3(&cfg).credentials, None);
    assert_eq!(cfg.defaults.schedule.to_string(), "@daily");
    assert_eq!(cfg.concurrency, 2);
    assert!(!cfg.run_on_startup);
    assert_eq!(cfg.defaults.timezone, Tz::UTC);
    assert_eq!(cfg.min_backups, 1);
    assert_eq!(cfg.http_addr, Some("0.0.0.0:8080".parse().unwrap()));
    assert_eq!(cfg.log_format, LogFormat::Text);
}

#[test]
fn custom_endpoint_defaults_to_path_style() {
    let cfg = Config::from_map(&map(&[
        ("S3_BUCKET", "b"),
        ("S3_ENDPOINT", "http://garage:3900"),
        ("S3_ACCESS_KEY_ID", "GK1"),
        ("S3_SECRET_ACCESS_KEY", "s3cr3t"),
        ("S3_PREFIX", "/prod/db/"),
        ("TZ", "Europe/Berlin"),
        ("PGBACKUP_HTTP_ADDR", "off"),
    ]))
    .unwrap();
    assert!(s3(&cfg).force_path_style);
    assert_eq!(s3(&cfg).prefix, "prod/db");
    assert_eq!(cfg.defaults.timezone, chrono_tz::Europe::Berlin);
    assert_eq!(cfg.http_addr, None);
    let (id, secret) = s3(&cfg).credentials.clone().unwrap();
    assert_eq!((id.as_str(), secret.expose()), ("GK1", "s3cr3t"));
    assert!(
        !format!("{cfg:?}").contains("s3cr3t"),
        "Debug must not print secrets"
    );
}

#[test]
fn unknown_variables_are_named() {
    let names = [
        "S3_BUCKET",
        "S3_SECRET_ACCESS_KEY_FILE",
        "PGBACKUP_LOG",
        "PGBACKUP_LOG_FILE",
        "PGBACKUP_SHEDULE",
        "RETENTION_KEEP_DAYS",
        "PATH",
        "AWS_REGION",
    ];
    assert_eq!(
        unknown_variables(names),
        [
            "PGBACKUP_LOG_FILE",
            "PGBACKUP_SHEDULE",
            "RETENTION_KEEP_DAYS"
        ]
    );
}

#[rstest]
#[case(&[], "S3_BUCKET")]
#[case(&[("S3_BUCKET", "b"), ("S3_ENDPOINT", "garage:3900")], "S3_ENDPOINT")]
#[case(&[("S3_BUCKET", "b"), ("S3_ENDPOINT", "http://")], "S3_ENDPOINT")]
#[case(&[("S3_BUCKET", "b"), ("S3_ENDPOINT", "ftp://garage:3900")], "S3_ENDPOINT")]
#[case(&[("S3_BUCKET", "b"), ("S3_TIMEOUT", "0s")], "S3_TIMEOUT")]
#[case(&[("S3_BUCKET", "b"), ("PGBACKUP_SCOPE", "Shop")], "PGBACKUP_SCOPE")]
#[case(&[("S3_BUCKET", "b"), ("S3_TIMEOUT", "soon")], "S3_TIMEOUT")]
#[case(&[("S3_BUCKET", "b"), ("S3_ACCESS_KEY_ID", "x")], "S3_SECRET_ACCESS_KEY")]
#[case(&[("S3_BUCKET", "b"), ("S3_SECRET_ACCESS_KEY", "x")], "S3_ACCESS_KEY_ID")]
#[case(&[("S3_BUCKET", "b"), ("S3_FORCE_PATH_STYLE", "maybe")], "S3_FORCE_PATH_STYLE")]
#[case(&[("S3_BUCKET", "b"), ("S3_PREFIX", "a//b")], "S3_PREFIX")]
#[case(&[("S3_BUCKET", "b"), ("S3_PREFIX", "a/../b")], "S3_PREFIX")]
#[case(&[("S3_BUCKET", "b"), ("S3_STORAGE_CLASS", "cold storage")], "S3_STORAGE_CLASS")]
#[case(&[("S3_BUCKET", "b"), ("PGBACKUP_SCHEDULE", "every day")], "PGBACKUP_SCHEDULE")]
#[case(&[("S3_BUCKET", "b"), ("PGBACKUP_CONCURRENCY", "0")], "PGBACKUP_CONCURRENCY")]
#[case(&[("S3_BUCKET", "b"), ("PGBACKUP_CONCURRENCY", "two")], "PGBACKUP_CONCURRENCY")]
#[case(&[("S3_BUCKET", "b"), ("PGBACKUP_RUN_ON_STARTUP", "sure")], "PGBACKUP_RUN_ON_STARTUP")]
#[case(&[("S3_BUCKET", "b"), ("TZ", "Mars/Olympus")], "TZ")]
#[case(&[("S3_BUCKET", "b"), ("RETENTION_KEEP_DAILY", "-1")], "RETENTION_KEEP_DAILY")]
#[case(&[("S3_BUCKET", "b"), ("RETENTION_MIN_BACKUPS", "0")], "RETENTION_MIN_BACKUPS")]
#[case(&[("S3_BUCKET", "b"), ("PGBACKUP_HTTP_ADDR", "8080")], "PGBACKUP_HTTP_ADDR")]
#[case(&[("PGBACKUP_DESTINATION", "backups")], "PGBACKUP_DESTINATION")]
#[case(&[("PGBACKUP_DESTINATION", "/backups/../etc")], "PGBACKUP_DESTINATION")]
#[case(&[("S3_BUCKET", "b"), ("PGBACKUP_LOG_FORMAT", "xml")], "PGBACKUP_LOG_FORMAT")]
#[case(&[("S3_BUCKET", "b"), ("PGBACKUP_RESYNC_INTERVAL", "soon")], "PGBACKUP_RESYNC_INTERVAL")]
fn bad_values_name_the_variable(#[case] pairs: &[(&str, &str)], #[case] variable: &str) {
    let err = Config::from_map(&map(pairs)).unwrap_err().to_string();
    assert!(err.contains(variable), "{err:?} should name {variable}");
}

#[test]
fn invalid_value_message_quotes_value_and_form() {
    let err = Config::from_map(&map(&[("S3_BUCKET", "b"), ("TZ", "Mars/Olympus")]))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "TZ=\"Mars/Olympus\" is not valid: expected an IANA time zone name such as UTC or Europe/Berlin"
    );
}

#[test]
fn file_variants_are_read_and_trimmed() {
    let vars = map(&[
        ("S3_BUCKET", "b"),
        ("S3_SECRET_ACCESS_KEY_FILE", "/run/secrets/s3"),
        ("S3_ACCESS_KEY_ID", "id"),
    ]);
    let resolved = resolve_env(vars, |p| {
        assert_eq!(p, Path::new("/run/secrets/s3"));
        Ok("from-file\n".to_string())
    })
    .unwrap();
    let cfg = Config::from_map(&resolved).unwrap();
    assert_eq!(
        s3(&cfg).credentials.as_ref().unwrap().1.expose(),
        "from-file"
    );
}

#[test]
fn file_variant_errors_name_variable_and_path() {
    let vars = map(&[("S3_BUCKET_FILE", "/nope")]);
    let err = resolve_env(vars, |_| Err(std::io::Error::other("No such file")))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("S3_BUCKET_FILE") && err.contains("/nope"),
        "{err}"
    );
    let both = map(&[("S3_BUCKET_FILE", "/x"), ("S3_BUCKET", "b")]);
    let err = resolve_env(both, |_| Ok(String::new())).unwrap_err();
    assert_eq!(
        err,
        ConfigError::Both {
            name: "S3_BUCKET".into()
        }
    );
}

#[test]
fn a_directory_destination_needs_no_s3_settings() {
    for v in ["/backups", "file:///backups"] {
        let cfg = Config::from_map(&map(&[("PGBACKUP_DESTINATION", v)])).unwrap();
        assert_eq!(
            cfg.destination,
            Destination::Local("/backups".into()),
            "{v}"
        );
    }
    let cfg =
        Config::from_map(&map(&[("PGBACKUP_DESTINATION", "s3"), ("S3_BUCKET", "b")])).unwrap();
    assert_eq!(s3(&cfg).bucket, "b");
    let err = Config::from_map(&map(&[("PGBACKUP_DESTINATION", "s3")])).unwrap_err();
    assert!(err.to_string().contains("S3_BUCKET"), "{err}");
}

#[test]
fn age_recipients_and_identity_are_read_and_never_echoed() {
    let (secret, public) = crate::pipeline::crypt::generate();
    let (_, other) = crate::pipeline::crypt::generate();
    let cfg = Config::from_map(&map(&[
        ("S3_BUCKET", "b"),
        ("PGBACKUP_AGE_RECIPIENTS", &format!("{public},\n{other}")),
    ]))
    .unwrap();
    assert_eq!(
        cfg.defaults.age_recipients.as_ref().unwrap().fingerprints(),
        [public.clone(), other]
    );
    assert!(cfg.defaults.age_identity.is_none());
    assert_eq!(cfg.defaults().age_recipients, cfg.defaults.age_recipients);
    // The identity from its file: named by the file, never by its content.
    let vars = map(&[
        ("S3_BUCKET", "b"),
        ("PGBACKUP_AGE_IDENTITY_FILE", "/run/secrets/age"),
    ]);
    let resolved = resolve_env(vars, |_| Ok(format!("# key\n{secret}\n"))).unwrap();
    let cfg = Config::from_map(&resolved).unwrap();
    let keys = cfg.defaults.age_identity.unwrap();
    assert_eq!(keys.public(), [public.as_str()]);
    assert_eq!(keys.source, "PGBACKUP_AGE_IDENTITY_FILE=/run/secrets/age");
    let resolved = resolve_env(
        map(&[("S3_BUCKET", "b"), ("PGBACKUP_AGE_IDENTITY_FILE", "/k")]),
        |_| Ok(format!("{public}\n")),
    )
    .unwrap();
    let err = Config::from_map(&resolved).unwrap_err().to_string();
    assert!(
        err.contains("PGBACKUP_AGE_IDENTITY_FILE=/k: line 1"),
        "{err}"
    );
    // A private key where the public one belongs: refused, and not repeated.
    let err = Config::from_map(&map(&[
        ("S3_BUCKET", "b"),
        ("PGBACKUP_AGE_RECIPIENTS", &secret),
    ]))
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("PGBACKUP_AGE_RECIPIENTS: ") && err.contains("PRIVATE key"),
        "{err}"
    );
    assert!(!err.contains(&secret[20..]), "{err}");
    assert!(
        unknown_variables(["PGBACKUP_AGE_IDENTITY_FILE", "PGBACKUP_AGE_RECIPIENTS_FILE"])
            .is_empty()
    );
}

#[test]
fn targets_declared_by_url_read_their_url_from_a_file_and_strays_are_named() {
    let vars = map(&[
        ("S3_BUCKET", "b"),
        (
            "PGBACKUP_TARGET_BILLING_URL_FILE",
            "/run/secrets/billing_url",
        ),
        ("PGBACKUP_TARGET_BILLING_SCHEDULE", "@hourly"),
        ("PGBACKUP_SKIP_IF_NEWER_THAN", "20h"),
    ]);
    let resolved = resolve_env(vars, |p| {
        assert_eq!(p, Path::new("/run/secrets/billing_url"));
        Ok("postgres://backup:pw@db.example.com/billing?sslmode=require\n".to_string())
    })
    .unwrap();
    let cfg = Config::from_map(&resolved).unwrap();
    assert_eq!(cfg.defaults.declared.len(), 1);
    let d = &cfg.defaults.declared[0];
    assert_eq!(d.name, "billing");
    let e = d.endpoint.as_ref().unwrap();
    assert_eq!(
        (e.host.as_str(), e.password.as_ref().unwrap().expose()),
        ("db.example.com", "pw")
    );
    assert_eq!(
        cfg.defaults.skip_if_newer_than,
        Some(Duration::from_secs(20 * 3600))
    );
    assert_eq!(
        unknown_variables([
            "PGBACKUP_TARGET_BILLING_URL_FILE",
            "PGBACKUP_TARGET_BILLING_SCHEDULE",
            "PGBACKUP_TARGET_BILLING_SCHEDUEL",
            "PGBACKUP_TARGET_NOURL_SCHEDULE",
        ]),
        [
            "PGBACKUP_TARGET_BILLING_SCHEDUEL",
            "PGBACKUP_TARGET_NOURL_SCHEDULE"
        ]
    );
    let bad = Config::from_map(&map(&[
        ("S3_BUCKET", "b"),
        ("PGBACKUP_SKIP_IF_NEWER_THAN", "yesterday"),
    ]))
    .unwrap_err();
    assert!(
        bad.to_string().contains("PGBACKUP_SKIP_IF_NEWER_THAN"),
        "{bad}"
    );
}
