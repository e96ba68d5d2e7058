use super::*;

#[test]
fn only_failures_that_may_pass_are_retried() {
    let upload = BackupError::Upload {
        what: "x".into(),
        source: crate::store::UploadError::TooLarge,
    };
    let dump = BackupError::Dump {
        program: "pg_dump".into(),
        database: "app".into(),
        code: 1,
        stderr: "connection reset".into(),
    };
    for (e, again) in [
        (dump, true),
        (upload, true),
        (BackupError::NotRunning("c".into()), true),
        (BackupError::Invalid("t".into()), false),
        (BackupError::FolderTaken("f".into()), false),
        (timed_out(Duration::from_secs(5)), false),
        (BackupError::Refused("shutting down".into()), false),
    ] {
        assert_eq!(retryable(&e), again, "{e}");
    }
    // Three attempts in all, the waits growing, within minutes.
    assert!(RETRY_DELAYS.windows(2).all(|w| w[0] < w[1]));
    assert!(RETRY_DELAYS.iter().sum::<Duration>() <= Duration::from_secs(600));
}

/// A hook the fake ran: which, its command, its environment.
type HookRun = (Point, Vec<String>, Vec<String>);

/// A fake attempt: each call takes the next scripted step; it records what was asked.
#[derive(Default)]
struct Fake {
    steps: std::sync::Mutex<std::collections::VecDeque<Step>>,
    calls: std::sync::atomic::AtomicUsize,
    discarded: std::sync::Mutex<Vec<String>>,
    /// Discards never end (a store that hangs during clean-up).
    discard_hangs: bool,
    /// Every hook run: which, the command, its environment.
    hooks: std::sync::Mutex<Vec<HookRun>>,
    /// Hooks that fail, by point.
    failing_hooks: Vec<Point>,
}

enum Step {
    Ok,
    Fail(BackupError),
    /// Runs until told to end.
    Block(Arc<tokio::sync::Notify>),
    /// Never ends by itself.
    Hang,
}

fn dump_error() -> BackupError {
    BackupError::Dump {
        program: "pg_dump".into(),
        database: "app".into(),
        code: 1,
        stderr: "server closed the connection".into(),
    }
}

#[async_trait::async_trait]
impl Work for Fake {
    async fn backup(&self, target: &Target, id: BackupId) -> Result<Manifest, BackupError> {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let step = self.steps.lock().unwrap().pop_front().unwrap_or(Step::Ok);
        match step {
            Step::Ok => Ok(Manifest::sample(&target.target.to_string(), "d", id)),
            Step::Fail(e) => Err(e),
            Step::Block(n) => {
                n.notified().await;
                Ok(Manifest::sample(&target.target.to_string(), "d", id))
            }
            Step::Hang => std::future::pending().await,
        }
    }

    async fn discard(&self, dir: &str) {
        self.discarded.lock().unwrap().push(dir.to_string());
        if self.discard_hangs {
            std::future::pending::<()>().await;
        }
    }

    async fn hook(
        &self,
        _target: &Target,
        point: Point,
        command: &[String],
        env: &[String],
        _timeout: Duration,
    ) -> Result<String, HookError> {
        self.hooks
            .lock()
            .unwrap()
            .push((point, command.to_vec(), env.to_vec()));
        if self.failing_hooks.contains(&point) {
            return Err(HookError::Failed {
                point: point.name(),
                command: shell_words::join(command),
                code: 3,
                output: "not now".into(),
            });
        }
        Ok(String::new())
    }
}

fn runner(fake: Fake) -> (Arc<Runner>, Arc<Fake>) {
    let fake = Arc::new(fake);
    let store = Arc::new(crate::store::memory::MemoryStore::new());
    let r = Runner::with_work(fake.clone(), store, Tz::UTC, 2, 1);
    (Arc::new(r), fake)
}

fn scripted(steps: Vec<Step>) -> Fake {
    Fake {
        steps: std::sync::Mutex::new(steps.into()),
        ..Default::default()
    }
}

fn calls(f: &Fake) -> usize {
    f.calls.load(std::sync::atomic::Ordering::SeqCst)
}

#[tokio::test(start_paused = true)]
async fn a_second_job_of_one_target_is_refused_or_waits() {
    let go = Arc::new(tokio::sync::Notify::new());
    let (r, fake) = runner(scripted(vec![Step::Block(go.clone()), Step::Ok]));
    let t = crate::discovery::test_target("db", &[]);
    let first = r.submit(t.clone(), Kind::Logical, Trigger::Manual, false);
    tokio::time::sleep(Duration::from_millis(10)).await;
    let busy = r.run(&t, Kind::Logical, Trigger::Manual, false).await;
    assert!(matches!(busy, Err(RunError::Busy { .. })), "{busy:?}");
    let waiting = r.submit(t.clone(), Kind::Logical, Trigger::Manual, true);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(calls(&fake), 1, "the waiting job has not started");
    go.notify_one();
    assert!(first.await.unwrap().unwrap().ok);
    assert!(waiting.await.unwrap().unwrap().ok);
    assert_eq!(calls(&fake), 2);
}

#[tokio::test(start_paused = true)]
async fn a_job_past_its_timeout_fails_naming_it_and_its_folder_is_discarded() {
    let (r, fake) = runner(scripted(vec![Step::Hang]));
    let t = crate::discovery::test_target("db", &[("pgbackup.timeout", "30s")]);
    let res = r
        .run(&t, Kind::Logical, Trigger::Manual, false)
        .await
        .unwrap();
    assert!(!res.ok);
    let err = res.error.unwrap();
    assert!(err.contains("timeout of 30s"), "{err}");
    let discarded = fake.discarded.lock().unwrap().clone();
    assert_eq!(discarded.len(), 1);
    assert!(discarded[0].ends_with("-logical"), "{discarded:?}");
}

#[tokio::test(start_paused = true)]
async fn a_failed_scheduled_job_is_retried_with_backoff_and_counts_once() {
    let (r, fake) = runner(scripted(vec![
        Step::Fail(dump_error()),
        Step::Fail(dump_error()),
        Step::Ok,
    ]));
    let t = yearly("db");
    let started = tokio::time::Instant::now();
    let res = r
        .run(&t, Kind::Logical, Trigger::Schedule, false)
        .await
        .unwrap();
    assert!(res.ok, "{res:?}");
    assert_eq!(calls(&fake), 3);
    assert_eq!(started.elapsed(), RETRY_DELAYS.iter().sum::<Duration>());
    assert_eq!(
        fake.discarded.lock().unwrap().len(),
        2,
        "each failed attempt cleaned up"
    );
    let labels = crate::job::metrics::JobLabels {
        target: t.target.to_string(),
        kind: "logical".into(),
    };
    assert_eq!(r.metrics.jobs_failed.get_or_create(&labels).get(), 0);
    assert_eq!(r.metrics.jobs_ok.get_or_create(&labels).get(), 1);
}

#[tokio::test(start_paused = true)]
async fn manual_jobs_and_lasting_failures_are_not_retried() {
    let (r, fake) = runner(scripted(vec![Step::Fail(dump_error())]));
    let t = yearly("db");
    let res = r
        .run(&t, Kind::Logical, Trigger::Manual, false)
        .await
        .unwrap();
    assert!(!res.ok);
    assert_eq!(calls(&fake), 1);

    let (r, fake) = runner(scripted(vec![Step::Fail(BackupError::FolderTaken(
        "x".into(),
    ))]));
    let res = r
        .run(&t, Kind::Logical, Trigger::Schedule, false)
        .await
        .unwrap();
    assert!(!res.ok);
    assert_eq!(calls(&fake), 1);
    assert!(
        fake.discarded.lock().unwrap().is_empty(),
        "another writer's folder is not touched"
    );

    // Three attempts at most; the last failure is what status shows.
    let (r, fake) = runner(scripted((0..5).map(|_| Step::Fail(dump_error())).collect()));
    let res = r
        .run(&t, Kind::Logical, Trigger::Schedule, false)
        .await
        .unwrap();
    assert!(!res.ok);
    assert_eq!(calls(&fake), 3);

    // A schedule that runs again sooner than the retry would: the next run is the retry.
    let (r, fake) = runner(scripted(vec![Step::Fail(dump_error()), Step::Ok]));
    let t = crate::discovery::test_target("db", &[("pgbackup.schedule", "*/5 * * * * *")]);
    let res = r
        .run(&t, Kind::Logical, Trigger::Schedule, false)
        .await
        .unwrap();
    assert!(!res.ok);
    assert_eq!(calls(&fake), 1);
}

/// A target whose next scheduled run is far off (the retries come first).
fn yearly(service: &str) -> Target {
    crate::discovery::test_target(service, &[("pgbackup.schedule", "0 0 1 1 *")])
}

#[tokio::test(start_paused = true)]
async fn shutdown_cancels_running_jobs_and_refuses_new_ones() {
    let (r, fake) = runner(scripted(vec![Step::Hang, Step::Hang]));
    let a = r.submit(
        crate::discovery::test_target("a", &[]),
        Kind::Logical,
        Trigger::Schedule,
        false,
    );
    let b = r.submit(
        crate::discovery::test_target("b", &[]),
        Kind::Logical,
        Trigger::Manual,
        false,
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(r.shutdown(Duration::from_secs(5)).await, 0, "both drained");
    for rx in [a, b] {
        let res = rx.await.unwrap().unwrap();
        assert!(!res.ok);
        assert!(res.error.unwrap().contains("shutting down"));
    }
    assert_eq!(fake.discarded.lock().unwrap().len(), 2);
    let t = crate::discovery::test_target("c", &[]);
    let refused = r.run(&t, Kind::Logical, Trigger::Manual, false).await;
    assert!(
        matches!(refused, Err(RunError::ShuttingDown)),
        "{refused:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_job_that_cannot_clean_up_within_the_grace_is_aborted() {
    let (r, _fake) = runner(Fake {
        steps: std::sync::Mutex::new(vec![Step::Hang].into()),
        discard_hangs: true,
        ..Default::default()
    });
    let rx = r.submit(
        crate::discovery::test_target("a", &[]),
        Kind::Logical,
        Trigger::Schedule,
        false,
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(r.shutdown(Duration::from_secs(5)).await, 1);
    assert!(rx.await.is_err(), "the aborted job sends no result");
}

fn hooked() -> Target {
    crate::discovery::test_target(
        "db",
        &[
            ("pgbackup.hook.pre_backup", "sh -c 'touch /tmp/paused'"),
            ("pgbackup.hook.post_backup", "resume-app --now"),
        ],
    )
}

fn env_of(f: &Fake, point: Point) -> Vec<String> {
    f.hooks
        .lock()
        .unwrap()
        .iter()
        .find(|(p, _, _)| *p == point)
        .map(|(_, _, env)| env.clone())
        .unwrap_or_default()
}

#[tokio::test(start_paused = true)]
async fn hooks_run_around_the_backup_and_the_post_hook_is_told_the_outcome() {
    let (r, fake) = runner(Fake::default());
    let res = r
        .run(&hooked(), Kind::Logical, Trigger::Manual, false)
        .await
        .unwrap();
    assert!(res.ok, "{:?}", res.error);
    let hooks = fake.hooks.lock().unwrap().clone();
    assert_eq!(hooks.len(), 2);
    assert_eq!(hooks[0].0, Point::PreBackup);
    assert_eq!(hooks[0].1, ["sh", "-c", "touch /tmp/paused"]);
    assert_eq!(hooks[1].0, Point::PostBackup);
    assert_eq!(hooks[1].1, ["resume-app", "--now"]);
    let post = env_of(&fake, Point::PostBackup);
    assert!(post.contains(&"PGBACKUP_RESULT=ok".to_string()), "{post:?}");
    assert!(
        post.contains(&"PGBACKUP_TARGET=shop/db".to_string()),
        "{post:?}"
    );
    assert!(post.contains(&format!("PGBACKUP_BACKUP_ID={}", res.backup_id.unwrap())));
    assert!(env_of(&fake, Point::PreBackup).contains(&"PGBACKUP_HOOK=pre_backup".to_string()));
}

#[tokio::test(start_paused = true)]
async fn a_failing_pre_hook_fails_the_backup_before_anything_is_written() {
    let (r, fake) = runner(Fake {
        failing_hooks: vec![Point::PreBackup],
        ..Default::default()
    });
    let res = r
        .run(&hooked(), Kind::Logical, Trigger::Schedule, false)
        .await
        .unwrap();
    assert!(!res.ok);
    assert_eq!(
        res.error.as_deref(),
        Some("pre_backup hook `sh -c 'touch /tmp/paused'` failed (exit code 3): not now")
    );
    assert_eq!(calls(&fake), 0, "no backup attempt, no retry");
    let post = env_of(&fake, Point::PostBackup);
    assert!(
        post.contains(&"PGBACKUP_RESULT=failed".to_string()),
        "{post:?}"
    );
    assert!(
        post.iter()
            .any(|e| e.starts_with("PGBACKUP_ERROR=pre_backup hook"))
    );
    let failures = |hook: &str| {
        r.metrics
            .hook_failures
            .get_or_create(&HookLabels {
                target: "shop/db".into(),
                hook: hook.into(),
            })
            .get()
    };
    assert_eq!((failures("pre_backup"), failures("post_backup")), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn a_failing_post_hook_is_counted_and_the_backup_stands() {
    let (r, _fake) = runner(Fake {
        failing_hooks: vec![Point::PostBackup],
        ..Default::default()
    });
    let res = r
        .run(&hooked(), Kind::Logical, Trigger::Manual, false)
        .await
        .unwrap();
    assert!(res.ok);
    let post = r
        .metrics
        .hook_failures
        .get_or_create(&HookLabels {
            target: "shop/db".into(),
            hook: "post_backup".into(),
        })
        .get();
    assert_eq!(post, 1);
}

/// A claimed drill or copy refuses a second claim of the same key (without waiting on itself)
/// and is free again once the first is dropped.
#[test]
fn a_claim_is_exclusive_until_dropped() {
    let (r, _) = runner(Fake::default());
    let first = r.claim("drill shop/db".into()).expect("free");
    assert!(r.claim("drill shop/db".into()).is_none(), "taken");
    let other = r.claim("sync shop/staging".into());
    assert!(other.is_some(), "another key is independent");
    drop(first);
    assert!(r.claim("drill shop/db".into()).is_some(), "free again");
}

/// A drill while one of the same target runs is refused, naming it; the runner keeps serving.
#[tokio::test(start_paused = true)]
async fn a_second_drill_of_one_target_is_refused() {
    let (r, _) = runner(Fake::default());
    let t = crate::discovery::test_target("db", &[]);
    let claim = r.claim(format!("drill {}", t.target)).unwrap();
    let e = r.drill(&t, Trigger::Manual).await.unwrap_err();
    assert!(matches!(e, RunError::DrillBusy { .. }), "{e}");
    assert!(e.to_string().contains("already running"), "{e}");
    drop(claim);
    let results = r.drill(&t, Trigger::Manual).await.unwrap();
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].trigger, "manual");
    let st = r.state.read().await;
    assert!(
        st[&t.target.to_string()]
            .drills
            .contains_key(&Kind::Logical)
    );
}

#[test]
fn a_backup_is_too_recent_only_within_the_window() {
    let now = Utc::now();
    let day = Duration::from_secs(20 * 3600);
    let two_hours = chrono::Duration::hours(2);
    assert_eq!(
        too_recent(now - two_hours, now, day),
        Some(Duration::from_secs(7200))
    );
    assert_eq!(
        too_recent(now - chrono::Duration::hours(21), now, day),
        None
    );
    // A clock that went backwards is not "older".
    assert_eq!(too_recent(now + two_hours, now, day), Some(Duration::ZERO));
}

#[tokio::test]
async fn runs_of_every_target_skip_one_backed_up_within_its_window_and_named_runs_do_not() {
    let (r, fake) = runner(Fake::default());
    let t = crate::discovery::test_target("db", &[("pgbackup.skip_if_newer_than", "20h")]);
    let spec = t.settings().unwrap();
    // Nothing committed yet: the start-up run backs up.
    let first = r
        .submit_unless_recent(t.clone(), Kind::Logical, Trigger::Startup, false)
        .await
        .unwrap();
    assert!(first.unwrap().ok);
    assert_eq!(calls(&fake), 1);
    // A committed backup of two hours ago (the fake writes nothing itself).
    let id = BackupId::new(Utc::now() - chrono::Duration::hours(2), Kind::Logical);
    let dir = layout::backup_dir(r.store.prefix(), &spec.prefix, &id);
    let m = Manifest::sample(&t.target.to_string(), "x", id);
    r.store
        .put(
            &layout::join(&[&dir, layout::MANIFEST]),
            serde_json::to_vec(&m).unwrap().into(),
        )
        .await
        .unwrap();
    let skipped = r
        .submit_unless_recent(t.clone(), Kind::Logical, Trigger::Startup, false)
        .await
        .unwrap();
    match skipped {
        Err(e @ RunError::Recent { .. }) => {
            let said = e.to_string();
            assert!(said.contains(&id.to_string()), "{said}");
            assert!(said.contains("within skip_if_newer_than=20h"), "{said}");
        }
        other => panic!("expected a skip: {other:?}"),
    }
    assert_eq!(calls(&fake), 1, "nothing ran");
    // Another kind, a named run, or a target without the setting: they run.
    let base = r
        .submit_unless_recent(t.clone(), Kind::Physical, Trigger::Startup, false)
        .await
        .unwrap();
    assert!(base.unwrap().ok);
    let named = r
        .submit(t.clone(), Kind::Logical, Trigger::Manual, false)
        .await
        .unwrap();
    assert!(named.unwrap().ok);
    let off = crate::discovery::test_target("db", &[("pgbackup.skip_if_newer_than", "off")]);
    let plain = r
        .submit_unless_recent(off, Kind::Logical, Trigger::Once, false)
        .await
        .unwrap();
    assert!(plain.unwrap().ok);
    assert_eq!(calls(&fake), 4);
}
