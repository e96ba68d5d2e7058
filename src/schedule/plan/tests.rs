use super::*;

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn target(service: &str, schedule: &str, physical: Option<&str>) -> Target {
    let mut labels = vec![("pgbackup.schedule", schedule)];
    if let Some(p) = physical {
        labels.push(("pgbackup.physical.schedule", p));
    }
    crate::discovery::test_target(service, &labels)
}

#[test]
fn plan_keeps_unchanged_schedules_and_replans_changed_ones() {
    let now = at("2026-11-20T10:00:30Z");
    let p1 = plan(
        &BTreeMap::new(),
        &[
            target("a", "@hourly", Some("@daily")),
            target("b", "off", None),
        ],
        now,
        Tz::UTC,
    );
    assert_eq!(p1.len(), 2, "b is off; a has logical and physical");
    let a = p1.keys().next().unwrap().0.clone();
    assert_eq!(
        p1[&(a.clone(), Kind::Logical)].next,
        at("2026-11-20T11:00:00Z")
    );
    assert_eq!(
        p1[&(a.clone(), Kind::Physical)].next,
        at("2026-11-21T00:00:00Z")
    );

    // Later, same labels (e.g. container re-created): the planned time does not move.
    let later = at("2026-11-20T10:30:00Z");
    let p2 = plan(
        &p1,
        &[target("a", "@hourly", Some("@daily"))],
        later,
        Tz::UTC,
    );
    assert_eq!(p2, p1);

    // Changed schedule: re-planned from now.
    let p3 = plan(&p1, &[target("a", "*/5 * * * *", None)], later, Tz::UTC);
    assert_eq!(p3.len(), 1);
    assert_eq!(p3[&(a, Kind::Logical)].next, at("2026-11-20T10:35:00Z"));

    // Target gone: nothing planned.
    assert!(plan(&p3, &[], later, Tz::UTC).is_empty());
}

#[test]
fn due_is_exactly_the_past_runs() {
    let now = at("2026-11-20T10:00:00Z");
    let p = plan(
        &BTreeMap::new(),
        &[
            target("a", "*/10 * * * * *", None),
            target("b", "@daily", None),
        ],
        now,
        Tz::UTC,
    );
    assert!(due(&p, now).is_empty());
    let d = due(&p, at("2026-11-20T10:00:10Z"));
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].0.service, "a");
    assert_eq!(due(&p, at("2026-11-21T00:00:00Z")).len(), 2);
}
