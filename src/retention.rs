//! Retention policy (restic semantics). This module holds the policy itself; the planner that
//! applies it to a target's backups builds on it.

use serde::Serialize;

/// How many backups to keep in each class; `None` means the class is not used.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KeepPolicy {
    pub last: Option<u32>,
    pub hourly: Option<u32>,
    pub daily: Option<u32>,
    pub weekly: Option<u32>,
    pub monthly: Option<u32>,
    pub yearly: Option<u32>,
}

impl KeepPolicy {
    /// True when no class is set: nothing is ever pruned.
    pub fn is_unset(&self) -> bool {
        *self == KeepPolicy::default()
    }

    /// `overrides` wins class by class: a label that sets `keep.daily` leaves the other classes
    /// at their environment defaults.
    pub fn merged(&self, overrides: &KeepPolicy) -> KeepPolicy {
        KeepPolicy {
            last: overrides.last.or(self.last),
            hourly: overrides.hourly.or(self.hourly),
            daily: overrides.daily.or(self.daily),
            weekly: overrides.weekly.or(self.weekly),
            monthly: overrides.monthly.or(self.monthly),
            yearly: overrides.yearly.or(self.yearly),
        }
    }
}

impl std::fmt::Display for KeepPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = [
            ("last", self.last),
            ("hourly", self.hourly),
            ("daily", self.daily),
            ("weekly", self.weekly),
            ("monthly", self.monthly),
            ("yearly", self.yearly),
        ]
        .iter()
        .filter_map(|(n, v)| v.map(|v| format!("{n}={v}")))
        .collect();
        if parts.is_empty() {
            f.write_str("keep all")
        } else {
            f.write_str(&parts.join(" "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
