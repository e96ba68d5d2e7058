//! A retention policy: how many backups to keep per class. Pure.

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
