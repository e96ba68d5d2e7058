//! When backups and restore drills run: the plan of next runs per target and job (pure, the clock an argument)
//! and the loop that wakes at the earliest one, or when the targets change, and submits the
//! due jobs to the runner.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use tokio::sync::watch;

use crate::discovery::{Shared, SyncDest, Target};
use crate::job::runner::{Runner, Trigger};
use crate::model::Schedule;
use crate::model::{Kind, TargetId};

/// What a schedule runs: a backup of one kind, or a restore drill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Job {
    Backup(Kind),
    Drill,
    /// A scheduled copy into a destination (the key's target is the destination).
    Sync,
}

/// Plan key: one schedule per target and job.
pub type PlanKey = (TargetId, Job);

/// The schedule of `job` in a target's settings.
fn schedule_of(spec: &crate::config::labels::TargetSpec, job: Job) -> &Schedule {
    match job {
        Job::Backup(Kind::Logical) => &spec.schedule_parsed,
        Job::Backup(Kind::Physical) => &spec.physical_schedule_parsed,
        Job::Drill => &spec.drill_schedule_parsed,
        Job::Sync => &Schedule::Off,
    }
}

/// Every schedule to plan, keyed: each valid target's jobs, then each valid copy destination.
fn entries<'a>(targets: &'a [Target], syncs: &'a [SyncDest]) -> Vec<(PlanKey, &'a Schedule)> {
    let mut out = Vec::new();
    for t in targets {
        let Some(s) = t.settings() else { continue };
        for job in JOBS {
            out.push(((t.target.clone(), job), schedule_of(s, job)));
        }
    }
    for d in syncs {
        if let Some(s) = d.settings() {
            out.push(((d.destination.clone(), Job::Sync), &s.schedule_parsed));
        }
    }
    out
}

const JOBS: [Job; 3] = [
    Job::Backup(Kind::Logical),
    Job::Backup(Kind::Physical),
    Job::Drill,
];

/// A planned next run, with the schedule it came from (to notice label changes).
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    pub schedule: String,
    pub next: DateTime<Utc>,
}

/// Re-plans after the target set changed: unchanged schedules keep their next run (so a
/// re-created container does not shift or repeat a run), new or changed ones are computed from
/// `now`, and vanished targets drop out. Pure.
pub fn plan(
    old: &BTreeMap<PlanKey, Planned>,
    targets: &[Target],
    now: DateTime<Utc>,
    tz: Tz,
) -> BTreeMap<PlanKey, Planned> {
    plan_with(old, targets, &[], now, tz)
}

/// [`plan`] with the copy destinations too. Pure.
pub fn plan_with(
    old: &BTreeMap<PlanKey, Planned>,
    targets: &[Target],
    syncs: &[SyncDest],
    now: DateTime<Utc>,
    tz: Tz,
) -> BTreeMap<PlanKey, Planned> {
    let mut next = BTreeMap::new();
    for (key, sched) in entries(targets, syncs) {
        if *sched == Schedule::Off || next.contains_key(&key) {
            continue; // off, or a scaled service: one schedule per target
        }
        let pattern = sched.to_string();
        let planned = match old.get(&key) {
            Some(p) if p.schedule == pattern => p.clone(),
            _ => match sched.next_after(now, tz) {
                Some(n) => Planned {
                    schedule: pattern,
                    next: n,
                },
                None => continue,
            },
        };
        next.insert(key, planned);
    }
    next
}

/// Keys whose run is due at `now`. Pure.
pub fn due(plan: &BTreeMap<PlanKey, Planned>, now: DateTime<Utc>) -> Vec<PlanKey> {
    plan.iter()
        .filter(|(_, p)| p.next <= now)
        .map(|(k, _)| k.clone())
        .collect()
}

fn find<'a>(targets: &'a [Target], id: &TargetId) -> Option<&'a Target> {
    targets
        .iter()
        .find(|t| &t.target == id && t.settings().is_some())
}

/// What time it is: the wall clock in production, a paused tokio clock in tests.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

pub fn wall_clock() -> Clock {
    Arc::new(Utc::now)
}

/// The scheduling loop's parts.
pub struct Scheduler {
    pub runner: Arc<Runner>,
    pub shared: Shared,
    /// Back every valid target up once, after the first listing.
    pub run_on_startup: bool,
    pub clock: Clock,
}

impl Scheduler {
    /// Wakes at the earliest planned run or when targets change, submits what is due, until
    /// shutdown.
    pub async fn run(self, mut changed: watch::Receiver<u64>, mut shutdown: watch::Receiver<bool>) {
        let Scheduler {
            runner,
            shared,
            run_on_startup,
            clock,
        } = self;
        let mut planned: BTreeMap<PlanKey, Planned> = BTreeMap::new();
        if run_on_startup {
            // Wait for the first listing, then back every valid target up once.
            let _ = tokio::time::timeout(Duration::from_secs(30), changed.changed()).await;
            for t in shared.registry.read().await.targets() {
                if t.settings().is_some() {
                    drop(runner.submit_unless_recent(t, Kind::Logical, Trigger::Startup, false));
                }
            }
        }
        loop {
            let targets = shared.registry.read().await.targets();
            let syncs = shared.syncs.read().await.clone();
            let now = clock();
            planned = plan_with(&planned, &targets, &syncs, now, runner.tz);
            for key in due(&planned, now) {
                if key.1 == Job::Sync
                    && let Some(d) = syncs.iter().find(|d| d.destination == key.0).cloned()
                {
                    let rx = runner.submit_sync(d.clone(), targets.clone(), Trigger::Schedule);
                    tokio::spawn(async move {
                        if let Ok(Err(e)) = rx.await {
                            tracing::warn!(destination = %d.destination, "Scheduled copy skipped: {e}.");
                        }
                    });
                }
                if let Some(t) = find(&targets, &key.0).cloned() {
                    match key.1 {
                        Job::Backup(kind) => {
                            let rx = runner.submit(t.clone(), kind, Trigger::Schedule, false);
                            tokio::spawn(async move {
                                if let Ok(Err(e)) = rx.await {
                                    tracing::warn!(target_id = %t.target, "Scheduled backup skipped: {e}.");
                                }
                            });
                        }
                        Job::Drill => {
                            let rx = runner.submit_drill(t.clone(), Trigger::Schedule);
                            tokio::spawn(async move {
                                if let Ok(Err(e)) = rx.await {
                                    tracing::warn!(target_id = %t.target, "Scheduled restore drill skipped: {e}.");
                                }
                            });
                        }
                        Job::Sync => {}
                    }
                }
                advance(&mut planned, &key, &targets, &syncs, now, runner.tz);
            }
            let sleep = planned
                .values()
                .map(|p| p.next)
                .min()
                .map(|n| (n - clock()).to_std().unwrap_or(Duration::ZERO))
                .unwrap_or(Duration::from_secs(3600));
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                r = changed.changed() => if r.is_err() { return },
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Moves `key`'s next run past `now` (or drops it when its schedule never fires again).
fn advance(
    planned: &mut BTreeMap<PlanKey, Planned>,
    key: &PlanKey,
    targets: &[Target],
    syncs: &[SyncDest],
    now: DateTime<Utc>,
    tz: Tz,
) {
    let next = entries(targets, syncs)
        .into_iter()
        .find(|(k, _)| k == key)
        .and_then(|(_, s)| s.next_after(now, tz));
    match next {
        Some(n) => {
            if let Some(p) = planned.get_mut(key) {
                p.next = n;
            }
        }
        None => {
            planned.remove(key);
        }
    }
}

#[cfg(test)]
mod tests;
