//! Cron schedules (croner). Pure: the clock is always an argument.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};

#[derive(Clone)]
pub enum Schedule {
    Off,
    Cron { pattern: String, cron: Box<Cron> },
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Schedule({self})")
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Off => f.write_str("off"),
            Schedule::Cron { pattern, .. } => f.write_str(pattern),
        }
    }
}

impl Schedule {
    pub const EXPECTED: &'static str = "a cron expression with 5 fields (minute precision) or 6 (with seconds first), \
         @hourly, @daily, @weekly, @monthly, @yearly, or off";

    pub fn parse(s: &str) -> Result<Schedule, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("off") {
            return Ok(Schedule::Off);
        }
        let fields = s.split_whitespace().count();
        if !s.starts_with('@') && !(5..=6).contains(&fields) {
            return Err(format!("it has {fields} fields"));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(s)
            .map_err(|e| e.to_string())?;
        let schedule = Schedule::Cron {
            pattern: s.to_string(),
            cron: Box::new(cron),
        };
        // A pattern that is valid but matches no date (`0 0 31 2 *`) would silently never run.
        let start = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .expect("valid")
            .with_timezone(&Utc);
        if schedule.next_after(start, Tz::UTC).is_none() {
            return Err("it never fires (no date matches it)".into());
        }
        Ok(schedule)
    }

    /// The first run strictly after `now`, evaluated in `tz` (so `@daily` means local midnight
    /// and DST transitions follow the zone's rules), returned in UTC.
    pub fn next_after(&self, now: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Off => None,
            Schedule::Cron { cron, .. } => cron
                .find_next_occurrence(&now.with_timezone(&tz), false)
                .ok()
                .map(|t| t.with_timezone(&Utc)),
        }
    }
}

impl FromStr for Schedule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Schedule::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[rstest]
    #[case("@daily")]
    #[case("@hourly")]
    #[case("0 3 * * *")]
    #[case("*/5 * * * * *")]
    #[case("0 0 4 * * SUN")]
    #[case("off")]
    #[case("OFF")]
    fn accepts(#[case] s: &str) {
        assert!(Schedule::parse(s).is_ok(), "{s}");
    }

    #[rstest]
    #[case("not-a-cron")]
    #[case("* * * *")]
    #[case("0 0 0 1 1 * 2030")]
    #[case("0 0 31 2 *")]
    #[case("0 0 30 2 *")]
    #[case("61 * * * *")]
    #[case("@fortnightly")]
    #[case("")]
    fn rejects(#[case] s: &str) {
        assert!(Schedule::parse(s).is_err(), "{s}");
    }

    #[test]
    fn next_run_in_utc_and_in_a_zone() {
        let daily = Schedule::parse("@daily").unwrap();
        assert_eq!(
            daily.next_after(at("2026-03-10T12:00:00Z"), Tz::UTC),
            Some(at("2026-03-11T00:00:00Z"))
        );
        // Midnight in Berlin is 23:00 UTC in winter.
        assert_eq!(
            daily.next_after(at("2026-01-10T12:00:00Z"), chrono_tz::Europe::Berlin),
            Some(at("2026-01-10T23:00:00Z"))
        );
        assert_eq!(
            Schedule::Off.next_after(at("2026-01-10T12:00:00Z"), Tz::UTC),
            None
        );
    }

    #[test]
    fn next_run_across_dst_changes() {
        let berlin = chrono_tz::Europe::Berlin;
        let s = Schedule::parse("30 2 * * *").unwrap();
        // 02:30 does not exist in Berlin on 2026-03-29 (clocks jump 02:00 → 03:00): the job runs
        // once that day, at the first existing instant after the gap, not skipped, not twice.
        let spring = s.next_after(at("2026-03-28T12:00:00Z"), berlin).unwrap();
        assert_eq!(spring, at("2026-03-29T01:00:00Z"));
        assert_eq!(
            s.next_after(spring, berlin).unwrap(),
            at("2026-03-30T00:30:00Z")
        );
        // 02:30 happens twice on 2026-10-25 (03:00 → 02:00): one run, at the first one.
        let autumn = s.next_after(at("2026-10-24T12:00:00Z"), berlin).unwrap();
        assert_eq!(autumn, at("2026-10-25T00:30:00Z"));
        assert_eq!(
            s.next_after(autumn, berlin).unwrap(),
            at("2026-10-26T01:30:00Z")
        );
    }

    #[test]
    fn seconds_level_schedules() {
        let s = Schedule::parse("*/10 * * * * *").unwrap();
        assert_eq!(
            s.next_after(at("2026-03-10T12:00:01Z"), Tz::UTC),
            Some(at("2026-03-10T12:00:10Z"))
        );
    }
}
