use super::*;
use std::collections::HashMap;

fn container(id: &str, service: &str, extra: &[(&str, &str)], running: bool) -> Container {
    test_container(id, service, extra, running)
}

fn defaults() -> Defaults {
    Defaults::from_map(&HashMap::new()).unwrap()
}

#[test]
fn registry_follows_events_and_resync() {
    let d = defaults();
    let mut r = Registry::default();
    assert!(r.upsert(&container("a", "db", &[], true), &d));
    assert!(
        !r.upsert(&container("a", "db", &[], true), &d),
        "idempotent"
    );
    assert!(r.upsert(
        &container("b", "bad", &[("pgbackup.schedule", "not-a-cron")], true),
        &d
    ));
    let t = r.targets();
    assert_eq!(t.len(), 2);
    assert_eq!(t[0].target.to_string(), "shop/bad");
    assert!(
        matches!(&t[0].spec, Parsed::Invalid { errors } if errors[0].label == "pgbackup.schedule")
    );
    assert!(t[1].settings().is_some());

    assert!(r.remove("b"));
    assert!(!r.remove("b"));
    // A stopped container is not a target even if still listed.
    assert!(r.upsert(&container("a", "db", &[], false), &d));
    assert!(r.targets().is_empty());

    // Resync replaces everything.
    assert!(r.replace_all(&[container("c", "db2", &[], true)], &d));
    assert!(!r.replace_all(&[container("c", "db2", &[], true)], &d));
    assert_eq!(r.targets()[0].container_id, "c");
}

#[test]
fn opted_out_and_one_off_containers_are_not_targets() {
    let d = defaults();
    assert!(
        Target::from_container(
            &container("a", "db", &[("pgbackup.enable", "false")], true),
            &d
        )
        .is_none()
    );
    assert!(
        Target::from_container(
            &container("a", "db", &[("com.docker.compose.oneoff", "True")], true),
            &d
        )
        .is_none()
    );
    let t = Target::from_container(
        &container("a", "db", &[("pgbackup.enable", "maybe")], true),
        &d,
    )
    .unwrap();
    assert!(matches!(t.spec, Parsed::Invalid { .. }));
}

#[test]
fn a_prefix_naming_another_targets_folder_is_refused() {
    let d = defaults();
    let mut r = Registry::default();
    r.upsert(&container("a", "db", &[], true), &d);
    r.upsert(
        &container("b", "intruder", &[("pgbackup.prefix", "shop/db")], true),
        &d,
    );
    r.upsert(
        &container("c", "x", &[("pgbackup.prefix", "common")], true),
        &d,
    );
    r.upsert(
        &container("d", "y", &[("pgbackup.prefix", "/common/")], true),
        &d,
    );
    r.upsert(
        &container("e", "own", &[("pgbackup.prefix", "elsewhere")], true),
        &d,
    );
    let t = r.targets();
    let by = |s: &str| t.iter().find(|t| t.target.service == s).unwrap();
    assert!(by("db").settings().is_some(), "the folder's owner keeps it");
    assert!(
        by("own").settings().is_some(),
        "a folder of its own is fine"
    );
    for s in ["intruder", "x", "y"] {
        match &by(s).spec {
            Parsed::Invalid { errors } => {
                assert_eq!(errors[0].label, "pgbackup.prefix");
                assert!(
                    errors[0].expected.contains("also writes there"),
                    "{}",
                    errors[0]
                );
            }
            other => panic!("{s}: {other:?}"),
        }
    }
    // Two containers of one scaled service share a folder legitimately.
    let mut r = Registry::default();
    r.upsert(&container("a", "db", &[("pgbackup.prefix", "p")], true), &d);
    r.upsert(
        &container("a2", "db", &[("pgbackup.prefix", "p")], true),
        &d,
    );
    assert!(r.targets().iter().all(|t| t.settings().is_some()));
}

#[test]
fn backoff_doubles_to_a_ceiling() {
    let mut d = Duration::ZERO;
    let mut seen = vec![];
    for _ in 0..10 {
        d = next_backoff(d);
        seen.push(d);
    }
    assert_eq!(seen[0], BACKOFF_MIN);
    assert_eq!(seen[1], BACKOFF_MIN * 2);
    assert_eq!(*seen.last().unwrap(), BACKOFF_MAX);
}

#[test]
fn a_target_declared_by_url_is_listed_with_its_settings_or_its_variables_errors() {
    let vars: HashMap<String, String> = [
        (
            "PGBACKUP_TARGET_BILLING_URL",
            "postgres://backup:s3cret@db.example.com:6432/billing?sslmode=verify-full&sslrootcert=/certs/ca.crt",
        ),
        ("PGBACKUP_TARGET_BILLING_KEEP_DAILY", "7"),
        ("PGBACKUP_DRILL_SCHEDULE", "@daily"),
        ("PGBACKUP_TARGET_BAD_URL", "postgres://backup:s3cret@db/x"),
        ("PGBACKUP_TARGET_BAD_SCHEDULE", "every day"),
        ("PGBACKUP_TARGET_BAD_PHYSICAL_SCHEDULE", "@daily"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let d = Defaults::from_map(&vars).unwrap();
    let mut r = Registry::default();
    r.replace_all(&[container("a", "db", &[], true)], &d);
    let targets = r.targets();
    let names: Vec<String> = targets.iter().map(|t| t.target.to_string()).collect();
    assert_eq!(names, ["bad", "billing", "shop/db"]);
    let billing = &targets[1];
    let spec = billing.settings().expect("valid");
    assert_eq!(spec.method, crate::model::Method::Connect);
    assert_eq!(spec.user, "backup");
    assert_eq!(spec.prefix, "billing");
    assert_eq!(spec.keep.daily, Some(7));
    assert_eq!(
        spec.drill_schedule_parsed,
        crate::model::Schedule::Off,
        "not PGBACKUP_DRILL_SCHEDULE's: a drill needs an image"
    );
    assert_eq!(
        spec.databases,
        crate::model::Databases::List(vec!["billing".into()])
    );
    let shown = serde_json::to_string(billing).unwrap();
    assert!(
        shown.contains(
            "\"url\":\"postgres://backup@db.example.com:6432/billing?sslmode=verify-full&sslrootcert=/certs/ca.crt\""
        ),
        "{shown}"
    );
    assert!(!shown.contains("s3cret"), "{shown}");
    let Parsed::Invalid { errors } = &targets[0].spec else {
        panic!("bad is invalid");
    };
    let named: Vec<&str> = errors.iter().map(|e| e.label.as_str()).collect();
    assert_eq!(
        named,
        [
            "PGBACKUP_TARGET_BAD_PHYSICAL_SCHEDULE",
            "PGBACKUP_TARGET_BAD_SCHEDULE"
        ],
        "{errors:?}"
    );
    assert!(
        errors[1]
            .to_string()
            .starts_with("variable PGBACKUP_TARGET_BAD_SCHEDULE=")
    );
    // Declared targets stay through every listing.
    r.replace_all(&[], &d);
    assert_eq!(r.targets().len(), 2);
}
