//! Retention (restic semantics, README "Retention"): which backups of one target and kind to keep, and why.
//! Pure: the planner sees backup times and a policy, never S3, so it is tested with fixed
//! histories.

pub mod prune;

use chrono::Datelike;
use chrono_tz::Tz;
use serde::Serialize;

use crate::model::{BackupId, KeepPolicy};

/// One backup's fate in a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub id: BackupId,
    pub keep: bool,
    /// Why it is kept (`daily 2026-11-20`, `newest`, …); empty when it is removed.
    pub reasons: Vec<String>,
}

/// The buckets of one class: a backup is kept when it is the newest one of a bucket not seen yet,
/// until the class has kept its count.
struct Class {
    name: &'static str,
    left: u32,
    last: Option<String>,
    bucket: fn(&chrono::DateTime<Tz>, &BackupId) -> String,
}

/// Applies `policy` to one target's backups of one kind, restic's way: backups are walked newest
/// first; each class (last, hourly, daily, weekly, monthly, yearly — in `tz`, ISO weeks) keeps
/// the newest backup of each of its most recent `n` periods that have a backup. On top of that
/// the newest backup is always kept, and so are the newest `min_backups`. An unset policy keeps
/// everything. Returns one decision per input, newest first.
pub fn plan(ids: &[BackupId], policy: &KeepPolicy, min_backups: u32, tz: Tz) -> Vec<Decision> {
    let mut sorted: Vec<BackupId> = ids.to_vec();
    sorted.sort_by(|a, b| b.cmp(a));
    sorted.dedup();
    let mut classes: Vec<Class> = [
        (
            "last",
            policy.last,
            (|_, id| id.to_string()) as fn(&chrono::DateTime<Tz>, &BackupId) -> String,
        ),
        ("hourly", policy.hourly, |t, _| {
            format!("{}h", t.format("%Y-%m-%d %H"))
        }),
        ("daily", policy.daily, |t, _| {
            t.format("%Y-%m-%d").to_string()
        }),
        ("weekly", policy.weekly, |t, _| {
            let w = t.iso_week();
            format!("{}-W{:02}", w.year(), w.week())
        }),
        ("monthly", policy.monthly, |t, _| {
            t.format("%Y-%m").to_string()
        }),
        ("yearly", policy.yearly, |t, _| t.year().to_string()),
    ]
    .into_iter()
    .filter_map(|(name, n, bucket)| {
        n.filter(|n| *n > 0).map(|left| Class {
            name,
            left,
            last: None,
            bucket,
        })
    })
    .collect();
    let keep_all = policy.is_unset();
    sorted
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let local = id.time.with_timezone(&tz);
            let mut reasons = Vec::new();
            if keep_all {
                reasons.push("no retention policy".to_string());
            }
            for c in classes.iter_mut() {
                if c.left == 0 {
                    continue;
                }
                let b = (c.bucket)(&local, id);
                if c.last.as_deref() != Some(b.as_str()) {
                    reasons.push(if c.name == "last" {
                        "last".to_string()
                    } else {
                        format!("{} {b}", c.name)
                    });
                    c.last = Some(b);
                    c.left -= 1;
                }
            }
            if i == 0 {
                reasons.push("newest".to_string());
            }
            if (i as u32) < min_backups && reasons.is_empty() {
                reasons.push(format!("minimum {min_backups} backups"));
            }
            Decision {
                id: *id,
                keep: !reasons.is_empty(),
                reasons,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    use chrono::{DateTime, Duration, Utc};
    use rstest::rstest;

    use crate::model::layout::Kind;

    fn at(s: &str) -> BackupId {
        BackupId::new(
            DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc),
            Kind::Logical,
        )
    }

    /// One backup every `step` from `from` to `to` inclusive.
    fn every(from: &str, to: &str, step: Duration) -> Vec<BackupId> {
        let (mut t, end) = (at(from).time, at(to).time);
        let mut out = Vec::new();
        while t <= end {
            out.push(BackupId::new(t, Kind::Logical));
            t += step;
        }
        out
    }

    fn policy(spec: &str) -> KeepPolicy {
        let mut p = KeepPolicy::default();
        for kv in spec.split_whitespace() {
            let (k, v) = kv.split_once('=').unwrap();
            let v = Some(v.parse().unwrap());
            match k {
                "last" => p.last = v,
                "hourly" => p.hourly = v,
                "daily" => p.daily = v,
                "weekly" => p.weekly = v,
                "monthly" => p.monthly = v,
                "yearly" => p.yearly = v,
                _ => panic!("{k}"),
            }
        }
        p
    }

    fn kept(ids: &[BackupId], p: &str, min: u32, tz: &str) -> Vec<String> {
        plan(ids, &policy(p), min, tz.parse().unwrap())
            .into_iter()
            .filter(|d| d.keep)
            .map(|d| d.id.time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .collect()
    }

    fn daily_two_years() -> Vec<BackupId> {
        every(
            "2025-01-01T03:00:00Z",
            "2026-12-31T03:00:00Z",
            Duration::days(1),
        )
    }

    fn with_gaps() -> Vec<BackupId> {
        // Daily backups with a week missing, and three in one hour on the last day.
        let mut ids = every(
            "2026-03-01T03:00:00Z",
            "2026-03-05T03:00:00Z",
            Duration::days(1),
        );
        ids.extend(every(
            "2026-03-13T03:00:00Z",
            "2026-03-14T03:00:00Z",
            Duration::days(1),
        ));
        ids.extend(
            [
                "2026-03-15T13:05:00Z",
                "2026-03-15T13:20:00Z",
                "2026-03-15T13:50:00Z",
            ]
            .map(at),
        );
        ids
    }

    #[rstest]
    #[case::two_years_daily_monthly_yearly(daily_two_years(), "daily=3 monthly=2 yearly=2", 0, "UTC",
        &["2026-12-31T03:00:00Z", "2026-12-30T03:00:00Z", "2026-12-29T03:00:00Z",
          "2026-11-30T03:00:00Z", "2025-12-31T03:00:00Z"])]
    #[case::two_years_weekly(daily_two_years(), "weekly=3", 0, "UTC",
        // 2026-12-31 is a Thursday of ISO week 53; the weeks before end on Sundays.
        &["2026-12-31T03:00:00Z", "2026-12-27T03:00:00Z", "2026-12-20T03:00:00Z"])]
    #[case::two_years_more_years_than_history(daily_two_years(), "yearly=10", 0, "UTC",
        &["2026-12-31T03:00:00Z", "2025-12-31T03:00:00Z"])]
    #[case::gaps_count_periods_with_backups(with_gaps(), "daily=4", 0, "UTC",
        &["2026-03-15T13:50:00Z", "2026-03-14T03:00:00Z", "2026-03-13T03:00:00Z",
          "2026-03-05T03:00:00Z"])]
    #[case::several_in_one_hour_hourly(with_gaps(), "hourly=2", 0, "UTC",
        &["2026-03-15T13:50:00Z", "2026-03-14T03:00:00Z"])]
    #[case::several_in_one_hour_last(with_gaps(), "last=2", 0, "UTC",
        &["2026-03-15T13:50:00Z", "2026-03-15T13:20:00Z"])]
    #[case::classes_overlap(with_gaps(), "last=1 daily=2 weekly=2", 0, "UTC",
        // ISO weeks: 03-15 is a Sunday (W11 with 03-13/14), 03-05 is W10.
        &["2026-03-15T13:50:00Z", "2026-03-14T03:00:00Z", "2026-03-05T03:00:00Z"])]
    #[case::days_are_local_days(
        vec![at("2026-01-10T22:30:00Z"), at("2026-01-10T23:30:00Z"), at("2026-01-11T00:30:00Z")],
        "daily=2", 0, "Europe/Berlin",
        // In Berlin 23:30Z and 00:30Z are both 11 January.
        &["2026-01-11T00:30:00Z", "2026-01-10T22:30:00Z"])]
    #[case::days_are_utc_days_in_utc(
        vec![at("2026-01-10T22:30:00Z"), at("2026-01-10T23:30:00Z"), at("2026-01-11T00:30:00Z")],
        "daily=2", 0, "UTC",
        &["2026-01-11T00:30:00Z", "2026-01-10T23:30:00Z"])]
    #[case::iso_week_spans_new_year(
        vec![at("2026-12-31T12:00:00Z"), at("2027-01-01T12:00:00Z")], "weekly=1", 0, "UTC",
        &["2027-01-01T12:00:00Z"])]
    #[case::minimum_backups(with_gaps(), "last=1", 3, "UTC",
        &["2026-03-15T13:50:00Z", "2026-03-15T13:20:00Z", "2026-03-15T13:05:00Z"])]
    #[case::zero_counts_keep_only_the_newest(with_gaps(), "daily=0", 0, "UTC",
        &["2026-03-15T13:50:00Z"])]
    fn plans(
        #[case] ids: Vec<BackupId>,
        #[case] p: &str,
        #[case] min: u32,
        #[case] tz: &str,
        #[case] expected: &[&str],
    ) {
        assert_eq!(kept(&ids, p, min, tz), expected);
    }

    #[test]
    fn reasons_and_order() {
        let mut ids = with_gaps();
        ids.reverse(); // input order does not matter
        let p = plan(&ids, &policy("last=1 daily=2"), 0, Tz::UTC);
        assert_eq!(p.len(), ids.len());
        assert_eq!(p[0].id, at("2026-03-15T13:50:00Z"));
        assert_eq!(p[0].reasons, ["last", "daily 2026-03-15", "newest"]);
        assert_eq!(p[1].reasons, Vec::<String>::new());
        assert!(!p[1].keep);
        let d = p
            .iter()
            .find(|d| d.id == at("2026-03-14T03:00:00Z"))
            .unwrap();
        assert_eq!(d.reasons, ["daily 2026-03-14"]);
        assert!(p.windows(2).all(|w| w[0].id > w[1].id), "newest first");
        let min = plan(&ids, &policy("last=1"), 2, Tz::UTC);
        assert_eq!(min[1].reasons, ["minimum 2 backups"]);
    }

    #[test]
    fn unset_policy_keeps_everything() {
        let ids = daily_two_years();
        let p = plan(&ids, &KeepPolicy::default(), 0, Tz::UTC);
        assert!(p.iter().all(|d| d.keep));
        assert_eq!(p.len(), 730);
        assert!(plan(&[], &policy("daily=1"), 1, Tz::UTC).is_empty());
    }

    #[test]
    fn merge_is_per_class() {
        let env = KeepPolicy {
            daily: Some(7),
            weekly: Some(4),
            ..Default::default()
        };
        let labels = KeepPolicy {
            daily: Some(14),
            last: Some(3),
            ..Default::default()
        };
        let m = env.merged(&labels);
        assert_eq!(m.to_string(), "last=3 daily=14 weekly=4");
        assert_eq!(KeepPolicy::default().to_string(), "keep all");
        assert!(KeepPolicy::default().is_unset());
    }
}
