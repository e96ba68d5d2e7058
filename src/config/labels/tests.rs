use super::*;
use rstest::rstest;

fn defaults() -> Defaults {
    Defaults::from_map(&HashMap::new()).unwrap()
}

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    [(ENABLE, "true")]
        .iter()
        .chain(pairs)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn id() -> TargetId {
    TargetId {
        project: Some("shop".into()),
        service: "db".into(),
    }
}

#[test]
fn typos_of_the_opt_in_label_are_noticed() {
    let l = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    assert_eq!(
        near_misses(&l(&[("pgbackup.enabled", "true"), ("other", "x")])),
        ["pgbackup.enabled"]
    );
    assert_eq!(
        near_misses(&l(&[
            ("pgbackup.Enable", "true"),
            ("PGBACKUP.schedule", "@daily")
        ])),
        ["PGBACKUP.schedule", "pgbackup.Enable"]
    );
    assert!(
        near_misses(&l(&[
            ("pgbackup.enable", "false"),
            ("pgbackup.schedule", "@daily")
        ]))
        .is_empty()
    );
    assert!(near_misses(&l(&[("com.docker.compose.project", "shop")])).is_empty());
    assert!(near_misses(&l(&[("pgbackup-e2e.owner", "x")])).is_empty());
    assert_eq!(
        near_misses(&l(&[("pgbackup_enable", "true")])),
        ["pgbackup_enable"]
    );
    for v in ["yes", "1", "on", "enabled"] {
        assert!(
            matches!(enabled(&l(&[("pgbackup.enable", v)])), Some(Err(_))),
            "{v}"
        );
    }
    assert!(matches!(
        enabled(&l(&[("pgbackup.enable", "TRUE")])),
        Some(Ok(()))
    ));
}

#[test]
fn defaults_apply() {
    let env: HashMap<String, String> = [("POSTGRES_USER".to_string(), "app".to_string())].into();
    let spec = parse(&id(), &labels(&[]), &env, &defaults()).unwrap();
    assert_eq!(spec.schedule, "@daily");
    assert_eq!(spec.method, Method::Exec);
    assert_eq!(spec.databases, Databases::All);
    assert!(spec.globals);
    assert_eq!(spec.user, "app");
    assert_eq!(spec.format, Format::Custom);
    assert_eq!(spec.compression, Compression::Zstd(3));
    assert_eq!(spec.physical_schedule, "off");
    assert_eq!(spec.timeout, Duration::from_secs(7200));
    assert_eq!(spec.prefix, "shop/db");
    let no_env = parse(&id(), &labels(&[]), &HashMap::new(), &defaults()).unwrap();
    assert_eq!(no_env.user, "postgres");
}

#[test]
fn every_label_is_read() {
    let spec = parse(
        &id(),
        &labels(&[
            ("pgbackup.schedule", "*/10 * * * * *"),
            ("pgbackup.method", "connect"),
            ("pgbackup.databases", "app, audit"),
            ("pgbackup.globals", "false"),
            ("pgbackup.user", "backup"),
            ("pgbackup.format", "plain"),
            ("pgbackup.compression", "gzip:9"),
            (
                "pgbackup.dump_options",
                "--no-owner -n public --exclude-table='audit log'",
            ),
            ("pgbackup.physical.schedule", "@weekly"),
            ("pgbackup.keep.daily", "7"),
            ("pgbackup.keep.last", "0"),
            ("pgbackup.timeout", "30m"),
            ("pgbackup.prefix", "/prod/orders/"),
        ]),
        &HashMap::new(),
        &defaults(),
    )
    .unwrap();
    assert_eq!(spec.schedule, "*/10 * * * * *");
    assert_eq!(spec.method, Method::Connect);
    assert_eq!(
        spec.databases,
        Databases::List(vec!["app".into(), "audit".into()])
    );
    assert!(!spec.globals);
    assert_eq!(spec.user, "backup");
    assert_eq!(spec.format, Format::Plain);
    assert_eq!(spec.compression, Compression::Gzip(9));
    assert_eq!(
        spec.dump_options,
        vec!["--no-owner", "--schema=public", "--exclude-table=audit log"]
    );
    assert_eq!(spec.physical_schedule, "@weekly");
    assert_eq!(spec.keep.daily, Some(7));
    assert_eq!(spec.keep.last, Some(0));
    assert_eq!(spec.timeout, Duration::from_secs(1800));
    assert_eq!(spec.prefix, "prod/orders");
}

#[rstest]
#[case("pgbackup.schedule", "not-a-cron")]
#[case("pgbackup.schedule", "* * *")]
#[case("pgbackup.physical.schedule", "@sometimes")]
#[case("pgbackup.method", "ssh")]
#[case("pgbackup.databases", "app,,audit")]
#[case("pgbackup.databases", "app,app")]
#[case("pgbackup.databases", "app,*")]
#[case("pgbackup.globals", "perhaps")]
#[case("pgbackup.user", "")]
#[case("pgbackup.format", "directory")]
#[case("pgbackup.compression", "zstd:25")]
#[case("pgbackup.compression", "gzip:0")]
#[case("pgbackup.compression", "lz4")]
#[case("pgbackup.compression", "none:3")]
#[case("pgbackup.dump_options", "--file=/tmp/x")]
#[case("pgbackup.dump_options", "-h evil")]
#[case("pgbackup.dump_options", "--schema")]
#[case("pgbackup.dump_options", "mydb")]
#[case("pgbackup.dump_options", "--no-owner; rm -rf /")]
#[case("pgbackup.dump_options", "'unterminated")]
#[case("pgbackup.dump_options", "-Fd")]
#[case("pgbackup.keep.daily", "seven")]
#[case("pgbackup.keep.weekly", "-1")]
#[case("pgbackup.timeout", "forever")]
#[case("pgbackup.timeout", "0s")]
#[case("pgbackup.prefix", "a/../b")]
#[case("pgbackup.enable", "yes please")]
#[case("pgbackup.schedul", "@daily")]
fn bad_labels_name_label_and_value(#[case] label: &str, #[case] value: &str) {
    let errs = parse(
        &id(),
        &labels(&[(label, value)]),
        &HashMap::new(),
        &defaults(),
    )
    .unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].label, label);
    assert_eq!(errs[0].value, value.trim());
    let msg = errs[0].to_string();
    assert!(msg.contains(label), "{msg}");
}

#[rstest]
#[case("host=evil password=secret dbname=app")]
#[case("app, postgresql://u:secret@evil/app")]
fn connection_strings_are_refused_and_never_shown(#[case] value: &str) {
    let errs = parse(
        &id(),
        &labels(&[("pgbackup.databases", value)]),
        &HashMap::new(),
        &defaults(),
    )
    .unwrap_err();
    let msg = errs[0].to_string();
    assert!(msg.contains("connection string"), "{msg}");
    assert!(
        !msg.contains("secret") && !format!("{errs:?}").contains("secret"),
        "{msg}"
    );
}

#[test]
fn any_valid_database_name_is_accepted() {
    let spec = parse(
        &id(),
        &labels(&[("pgbackup.databases", "a/b, Odd \"q\" name ,ünïcødé,globals")]),
        &HashMap::new(),
        &defaults(),
    )
    .unwrap();
    assert_eq!(
        spec.databases,
        Databases::List(vec![
            "a/b".into(),
            "Odd \"q\" name".into(),
            "ünïcødé".into(),
            "globals".into()
        ])
    );
}

#[test]
fn all_errors_are_reported_together() {
    let errs = parse(
        &id(),
        &labels(&[("pgbackup.schedule", "bad"), ("pgbackup.method", "bad")]),
        &HashMap::new(),
        &defaults(),
    )
    .unwrap_err();
    let names: Vec<_> = errs.iter().map(|e| e.label.as_str()).collect();
    assert_eq!(names, ["pgbackup.method", "pgbackup.schedule"]);
}

#[rstest]
#[case(&[("com.docker.compose.project", "shop"), ("com.docker.compose.service", "db")], "/shop-db-1", Some("shop/db"))]
#[case(&[], "/standalone-pg", Some("standalone-pg"))]
#[case(&[("com.docker.compose.project", "shop"), ("com.docker.compose.service", "db"), ("com.docker.compose.oneoff", "True")], "/shop-db-run-1", None)]
fn target_identity(
    #[case] pairs: &[(&str, &str)],
    #[case] name: &str,
    #[case] expected: Option<&str>,
) {
    let l: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(
        TargetId::of(&l, name).map(|t| t.to_string()).as_deref(),
        expected
    );
}

#[rstest]
#[case(&[], None)]
#[case(&[(ENABLE, "false")], None)]
#[case(&[(ENABLE, "true")], Some(true))]
#[case(&[(ENABLE, "nope")], Some(false))]
fn opt_in(#[case] pairs: &[(&str, &str)], #[case] expected: Option<bool>) {
    let l: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(enabled(&l).map(|r| r.is_ok()), expected);
}

#[test]
fn env_defaults_feed_labels() {
    let d = Defaults::from_map(
        &[
            ("PGBACKUP_SCHEDULE".to_string(), "0 3 * * *".to_string()),
            ("RETENTION_KEEP_DAILY".to_string(), "7".to_string()),
            ("RETENTION_KEEP_WEEKLY".to_string(), "4".to_string()),
        ]
        .into(),
    )
    .unwrap();
    let spec = parse(
        &id(),
        &labels(&[("pgbackup.keep.daily", "14")]),
        &HashMap::new(),
        &d,
    )
    .unwrap();
    assert_eq!(spec.schedule, "0 3 * * *");
    assert_eq!(spec.keep.daily, Some(14));
    assert_eq!(spec.keep.weekly, Some(4));
}

#[test]
fn age_recipients_label_overrides_the_default_and_hides_private_keys() {
    let (secret, public) = crate::pipeline::crypt::generate();
    let (_, team) = crate::pipeline::crypt::generate();
    let mut d = defaults();
    assert_eq!(
        parse(&id(), &labels(&[]), &HashMap::new(), &d)
            .unwrap()
            .age_recipients,
        None
    );
    d.age_recipients = Some(crate::model::encryption::Recipients::parse(&team).unwrap());
    let spec = parse(&id(), &labels(&[]), &HashMap::new(), &d).unwrap();
    assert_eq!(spec.age_recipients.unwrap().fingerprints(), [team.as_str()]);
    let own = labels(&[("pgbackup.age_recipients", &public)]);
    let spec = parse(&id(), &own, &HashMap::new(), &d).unwrap();
    assert_eq!(spec.age_recipients.unwrap().fingerprints(), [public]);
    let off = labels(&[("pgbackup.age_recipients", "none")]);
    assert_eq!(
        parse(&id(), &off, &HashMap::new(), &d)
            .unwrap()
            .age_recipients,
        None
    );
    // A bad value makes the target invalid (never backed up unencrypted by mistake); a private
    // key is not shown again.
    for (value, shown) in [
        ("age1broken", "age1broken"),
        (secret.as_str(), "(hidden: it holds a private key)"),
    ] {
        let errors = parse(
            &id(),
            &labels(&[("pgbackup.age_recipients", value)]),
            &HashMap::new(),
            &d,
        )
        .unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].label, "pgbackup.age_recipients");
        assert_eq!(errors[0].value, shown);
        assert!(!errors[0].to_string().contains(&secret[20..]));
    }
}
