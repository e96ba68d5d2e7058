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
        p1[&(a.clone(), Job::Backup(Kind::Logical))].next,
        at("2026-11-20T11:00:00Z")
    );
    assert_eq!(
        p1[&(a.clone(), Job::Backup(Kind::Physical))].next,
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
    assert_eq!(
        p3[&(a, Job::Backup(Kind::Logical))].next,
        at("2026-11-20T10:35:00Z")
    );

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

/// Counts the backups (and drills) it is asked for; each succeeds at once.
#[derive(Default)]
struct Count(
    std::sync::atomic::AtomicUsize,
    std::sync::atomic::AtomicUsize,
);

#[async_trait::async_trait]
impl crate::job::runner::Work for Count {
    async fn backup(
        &self,
        target: &Target,
        id: crate::model::BackupId,
    ) -> Result<crate::model::Manifest, crate::job::backup::BackupError> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(crate::model::Manifest::sample(
            &target.target.to_string(),
            "d",
            id,
        ))
    }

    async fn discard(&self, _dir: &str) {}

    async fn drill(
        &self,
        target: &Target,
        _cancel: &tokio_util::sync::CancellationToken,
    ) -> Vec<crate::job::drill::DrillResult> {
        self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        vec![crate::job::drill::DrillResult {
            ok: true,
            error: None,
            ..crate::job::drill::DrillResult::failed(target, "")
        }]
    }
}

#[test]
fn drills_are_planned_on_their_own_schedule() {
    let now = at("2026-11-20T10:00:30Z");
    let t = crate::discovery::test_target(
        "a",
        &[
            ("pgbackup.schedule", "off"),
            ("pgbackup.drill.schedule", "30 4 * * *"),
        ],
    );
    let p = plan(&BTreeMap::new(), std::slice::from_ref(&t), now, Tz::UTC);
    assert_eq!(p.len(), 1);
    assert_eq!(
        p[&(t.target.clone(), Job::Drill)].next,
        at("2026-11-21T04:30:00Z")
    );
}

/// Drills run on their schedule through the runner, and status keeps the last one.
#[tokio::test(start_paused = true)]
async fn the_loop_runs_drills_when_due() {
    let work = Arc::new(Count::default());
    let store = Arc::new(crate::store::memory::MemoryStore::new());
    let runner = Arc::new(Runner::with_work(work.clone(), store, Tz::UTC, 2, 1));
    let shared = Shared::default();
    let defaults = crate::config::Defaults::from_map(&Default::default()).unwrap();
    let c = crate::discovery::test_container(
        "c1",
        "db",
        &[
            ("pgbackup.schedule", "off"),
            ("pgbackup.drill.schedule", "*/10 * * * * *"),
        ],
        true,
    );
    shared.registry.write().await.upsert(&c, &defaults);
    let base = at("2026-11-21T12:00:05Z");
    let start = tokio::time::Instant::now();
    let clock: Clock =
        Arc::new(move || base + chrono::Duration::from_std(start.elapsed()).unwrap());
    let (_changed_tx, changed_rx) = watch::channel(0u64);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let looping = tokio::spawn(
        Scheduler {
            runner: runner.clone(),
            shared: shared.clone(),
            run_on_startup: false,
            clock,
        }
        .run(changed_rx, shutdown_rx),
    );
    tokio::time::sleep(Duration::from_secs(26)).await;
    assert_eq!(work.1.load(std::sync::atomic::Ordering::SeqCst), 3);
    assert_eq!(work.0.load(std::sync::atomic::Ordering::SeqCst), 0);
    let st = runner.state.read().await;
    let last = st.values().next().unwrap().drills[&Kind::Logical].clone();
    assert!(last.ok);
    assert_eq!(last.trigger, "schedule");
    drop(st);
    let metrics = runner.metrics.encode();
    assert!(
        metrics.contains("pgbackup_drill_last_result{target=\"")
            && metrics.contains(",kind=\"logical\",result=\"passed\"} 3"),
        "{metrics}"
    );
    shutdown_tx.send(true).unwrap();
    looping.await.unwrap();
}

/// The loop on a paused clock: due runs are submitted at their times, and a changed schedule
/// is re-planned as soon as discovery says the targets changed.
#[tokio::test(start_paused = true)]
async fn the_loop_runs_what_is_due_and_replans_when_targets_change() {
    let work = Arc::new(Count::default());
    let store = Arc::new(crate::store::memory::MemoryStore::new());
    let runner = Arc::new(Runner::with_work(work.clone(), store, Tz::UTC, 2, 1));
    let shared = Shared::default();
    let defaults = crate::config::Defaults::from_map(&Default::default()).unwrap();
    let every =
        |s: &str| crate::discovery::test_container("c1", "db", &[("pgbackup.schedule", s)], true);
    shared
        .registry
        .write()
        .await
        .upsert(&every("*/10 * * * * *"), &defaults);
    // The wall clock of the test: 12:00:05 when the loop starts, moving with tokio's clock.
    let base = at("2026-11-21T12:00:05Z");
    let start = tokio::time::Instant::now();
    let clock: Clock =
        Arc::new(move || base + chrono::Duration::from_std(start.elapsed()).unwrap());
    let (changed_tx, changed_rx) = watch::channel(0u64);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let looping = tokio::spawn(
        Scheduler {
            runner: runner.clone(),
            shared: shared.clone(),
            run_on_startup: false,
            clock,
        }
        .run(changed_rx, shutdown_rx),
    );
    let count = || work.0.load(std::sync::atomic::Ordering::SeqCst);
    // 12:00:10, :20, :30.
    tokio::time::sleep(Duration::from_secs(26)).await;
    assert_eq!(count(), 3);
    // Every minute from now on: nothing at :40 or :50, one at 12:01:00.
    shared
        .registry
        .write()
        .await
        .replace_all(&[every("0 * * * * *")], &defaults);
    changed_tx.send(1).unwrap();
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(count(), 3, "the old schedule no longer runs");
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(count(), 4, "the new one does");
    shutdown_tx.send(true).unwrap();
    looping.await.unwrap();
}
