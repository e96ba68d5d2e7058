//! `pgctl status`: the report the controller serves and the table people read. Pure.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::discovery::{DockerState, Target};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// `controller` when served by `pgctl run`; `docker` when `status` listed containers itself
    /// because no controller answered.
    pub source: String,
    pub generated_at: DateTime<Utc>,
    pub timezone: String,
    pub docker: DockerView,
    pub targets: Vec<serde_json::Value>,
    /// Containers not opted in whose labels look like ours (name → labels): likely typos.
    #[serde(default)]
    pub not_opted_in: std::collections::BTreeMap<String, Vec<String>>,
    /// Physical restores whose switch was cut off (`project/service (old container …)`).
    #[serde(default)]
    pub unfinished_restores: Vec<String>,
    /// Destinations of scheduled copies (`pgbackup.sync.from`), with their last copy.
    #[serde(default)]
    pub syncs: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct DockerView {
    pub connected: bool,
    pub host: String,
    pub last_error: Option<String>,
    pub last_sync: Option<DateTime<Utc>>,
}

impl From<DockerState> for DockerView {
    fn from(d: DockerState) -> Self {
        DockerView {
            connected: d.connected,
            host: d.host,
            last_error: d.last_error,
            last_sync: d.last_sync,
        }
    }
}

/// Builds the report; `now` and `tz` decide the next runs.
pub fn report(
    source: &str,
    targets: &[Target],
    docker: DockerView,
    now: DateTime<Utc>,
    tz: Tz,
) -> Report {
    let targets = targets
        .iter()
        .map(|t| {
            let mut v = serde_json::to_value(t).expect("targets serialise");
            if let Some(s) = t.settings() {
                let next = s.schedule_parsed.next_after(now, tz);
                let next_physical = s.physical_schedule_parsed.next_after(now, tz);
                v["next_run"] = serde_json::json!(next);
                v["next_physical_run"] = serde_json::json!(next_physical);
                v["next_drill_run"] =
                    serde_json::json!(s.drill_schedule_parsed.next_after(now, tz));
            }
            v
        })
        .collect();
    Report {
        source: source.to_string(),
        generated_at: now,
        timezone: tz.to_string(),
        docker,
        targets,
        not_opted_in: Default::default(),
        unfinished_restores: vec![],
        syncs: vec![],
    }
}

/// An RFC 3339 time of the report as people read it: in the report's zone, named.
fn local(v: &serde_json::Value, tz: Tz) -> Option<String> {
    let t = DateTime::parse_from_rfc3339(v.as_str()?).ok()?;
    Some(
        t.with_timezone(&tz)
            .format("%Y-%m-%d %H:%M:%S %Z")
            .to_string(),
    )
}

/// The last run's columns: when, result, size, duration; a running job instead when there is
/// one.
fn last_run(run: &serde_json::Value, tz: Tz) -> [String; 4] {
    let dash = || "-".to_string();
    if let Some(since) = local(&run["running"]["started_at"], tz) {
        return [
            since,
            format!(
                "running ({})",
                run["running"]["kind"].as_str().unwrap_or("?")
            ),
            dash(),
            dash(),
        ];
    }
    let last = &run["last"];
    let Some(when) = local(&last["started_at"], tz) else {
        return [dash(), dash(), dash(), dash()];
    };
    let ok = last["ok"].as_bool().unwrap_or(false);
    [
        when,
        format!(
            "{} {}",
            if ok { "ok" } else { "FAILED" },
            last["kind"].as_str().unwrap_or("")
        ),
        if ok {
            crate::table::human_bytes(last["bytes"].as_u64().unwrap_or(0))
        } else {
            dash()
        },
        format!("{:.1}s", last["duration_seconds"].as_f64().unwrap_or(0.0)),
    ]
}

/// The restore drill lines under a target: running, or each kind's last outcome, and the next.
fn drill_notes(t: &serde_json::Value, tz: Tz) -> Vec<String> {
    let next = local(&t["next_drill_run"], tz)
        .map(|n| format!(" (next {n})"))
        .unwrap_or_default();
    if let Some(since) = local(&t["run"]["drilling"], tz) {
        return vec![format!("drill: running since {since}")];
    }
    let Some(drills) = t["run"]["drills"].as_object().filter(|d| !d.is_empty()) else {
        return if next.is_empty() {
            vec![]
        } else {
            vec![format!("drill: none yet{next}")]
        };
    };
    drills
        .iter()
        .map(|(kind, d)| {
            let when = local(&d["started_at"], tz).unwrap_or_else(|| "?".into());
            let backup = d["backup_id"].as_str().unwrap_or("-");
            let took = d["duration_seconds"].as_f64().unwrap_or(0.0);
            if d["ok"].as_bool().unwrap_or(false) {
                let checked = if kind == "physical" {
                    "cluster and databases as recorded".to_string()
                } else {
                    format!(
                        "{} table(s) and {} row(s) as recorded",
                        d["tables_checked"].as_u64().unwrap_or(0),
                        d["rows_checked"].as_u64().unwrap_or(0)
                    )
                };
                format!(
                    "drill ({kind}): passed {when}, backup {backup}, {checked}, {took:.1}s{next}"
                )
            } else {
                format!(
                    "drill ({kind}): FAILED {when}, backup {backup}, {took:.1}s: {}{next}",
                    d["error"].as_str().unwrap_or("(no reason)")
                )
            }
        })
        .collect()
}

/// Human table: one line per target, then one indented line per label error, failed last run
/// or storage note. Times are in the report's zone (`TZ`), named on each.
pub fn render(r: &Report) -> String {
    let tz: Tz = r.timezone.parse().unwrap_or(Tz::UTC);
    let mut rows: Vec<Vec<String>> = vec![vec![
        "TARGET".into(),
        "CONTAINER".into(),
        "STATE".into(),
        "SCHEDULE".into(),
        "NEXT RUN".into(),
        "LAST RUN".into(),
        "RESULT".into(),
        "SIZE".into(),
        "TOOK".into(),
        "METHOD/DATABASES".into(),
    ]];
    let mut notes: Vec<(usize, String)> = vec![];
    for t in &r.targets {
        let s = |k: &str| t[k].as_str().unwrap_or("").to_string();
        let settings = &t["settings"];
        let next = local(&t["next_run"], tz).unwrap_or_else(|| "-".into());
        let last = last_run(&t["run"], tz);
        if t["run"]["running"].is_null()
            && let Some(e) = t["run"]["last"]["error"].as_str()
        {
            notes.push((rows.len(), format!("last backup failed: {e}")));
        }
        for note in drill_notes(t, tz) {
            notes.push((rows.len(), note));
        }
        let state = s("state");
        if state == "invalid" {
            for e in t["errors"].as_array().into_iter().flatten() {
                notes.push((
                    rows.len(),
                    format!(
                        "label {}={:?} is not valid: expected {}",
                        e["label"].as_str().unwrap_or(""),
                        e["value"].as_str().unwrap_or(""),
                        e["expected"].as_str().unwrap_or("")
                    ),
                ));
            }
        }
        let storage = &t["run"]["storage"];
        let (young, open, unusable) = (
            storage["young_leftovers"].as_u64().unwrap_or(0),
            storage["open_uploads"].as_u64().unwrap_or(0),
            storage["unusable"].as_u64().unwrap_or(0),
        );
        if young + open > 0 {
            notes.push((
                rows.len(),
                format!(
                    "storage: {young} uncommitted folders and {open} open uploads kept (oldest from {}): removed by prune once a day old",
                    storage["oldest_kept"].as_str().unwrap_or("?")
                ),
            ));
        }
        if unusable > 0 {
            notes.push((
                rows.len(),
                format!("storage: {unusable} backups not counted by retention (see pgctl prune --dry-run)"),
            ));
        }
        let dbs = match &settings["databases"] {
            serde_json::Value::String(s) if s == "all" => "all".to_string(),
            v => v["list"]
                .as_array()
                .map(|l| {
                    l.iter()
                        .filter_map(|x| x.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default(),
        };
        rows.push(vec![
            s("target"),
            // A target declared by URL has no container: where it is, without the password.
            match t["url"].as_str() {
                Some(url) => format!("url {}", url.split('?').next().unwrap_or(url)),
                None => s("container"),
            },
            state.clone(),
            settings["schedule"].as_str().unwrap_or("-").to_string(),
            if state == "valid" { next } else { "-".into() },
            last[0].clone(),
            last[1].clone(),
            last[2].clone(),
            last[3].clone(),
            if state == "valid" {
                format!("{}/{}", settings["method"].as_str().unwrap_or(""), dbs)
            } else {
                "-".into()
            },
        ]);
    }
    let mut out = String::new();
    if r.source != "controller" {
        out.push_str(
            "note: no controller answered; showing labels read directly from Docker (no run state)\n",
        );
    }
    for u in &r.unfinished_restores {
        let service = u.split(' ').next().unwrap_or(u);
        out.push_str(&format!(
            "warning: unfinished physical restore of {u}: cut off, or running now; once no `pgctl restore` runs for it, finish it with `pgctl restore --resume {service}` or undo it with `pgctl restore --rollback {service}`\n"
        ));
    }
    for (name, labels) in &r.not_opted_in {
        out.push_str(&format!(
            "warning: container {name} has {} but no pgbackup.enable=true: not backed up (a typo?)\n",
            labels.join(", ")
        ));
    }
    if !r.docker.connected {
        out.push_str(&format!(
            "warning: Docker is not connected: {}\n",
            r.docker.last_error.as_deref().unwrap_or("unknown error")
        ));
    }
    for (i, line) in crate::table::lines(&rows).iter().enumerate() {
        out.push_str(line);
        out.push('\n');
        for (_, n) in notes.iter().filter(|(row_i, _)| *row_i == i) {
            out.push_str(&format!("    {n}\n"));
        }
    }
    if r.targets.is_empty() {
        out.push_str("(no containers with the label pgbackup.enable=true are running)\n");
    }
    for d in &r.syncs {
        out.push_str(&sync_line(d, tz));
    }
    out
}

/// One line per copy destination, and its last copy's outcome under it.
fn sync_line(d: &serde_json::Value, tz: Tz) -> String {
    let dest = d["destination"].as_str().unwrap_or("?");
    if d["state"] == "invalid" {
        let errors: Vec<String> = d["errors"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                format!(
                    "label {}={:?} is not valid: expected {}",
                    e["label"].as_str().unwrap_or(""),
                    e["value"].as_str().unwrap_or(""),
                    e["expected"].as_str().unwrap_or("")
                )
            })
            .collect();
        return format!("copy into {dest}: invalid\n    {}\n", errors.join("\n    "));
    }
    let set = &d["settings"];
    let next = local(&d["next_run"], tz).unwrap_or_else(|| "-".into());
    let mut out = format!(
        "copy into {dest} from {} ({}, next {next})\n",
        set["from"].as_str().unwrap_or("?"),
        set["schedule"].as_str().unwrap_or("?")
    );
    let run = &d["run"];
    if let Some(since) = local(&run["running"], tz) {
        out.push_str(&format!("    copying since {since}\n"));
    } else if let Some(when) = local(&run["last"]["started_at"], tz) {
        let l = &run["last"];
        let backup = l["backup_id"].as_str().unwrap_or("-");
        out.push_str(&if l["skipped"] == true {
            format!("    last {when}: nothing new (holds {backup})\n")
        } else if l["ok"] == true {
            format!(
                "    last {when}: copied {backup}, {:.1}s\n",
                l["duration_seconds"].as_f64().unwrap_or(0.0)
            )
        } else {
            format!(
                "    last {when}: FAILED: {}\n",
                l["error"].as_str().unwrap_or("(no reason)")
            )
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(service: &str, extra: &[(&str, &str)]) -> Target {
        crate::discovery::test_target(service, extra)
    }

    #[test]
    fn copy_destinations_show_their_source_schedule_and_last_copy() {
        let mut r = report(
            "controller",
            &[],
            DockerView {
                connected: true,
                ..Default::default()
            },
            Utc::now(),
            Tz::UTC,
        );
        r.syncs = vec![
            serde_json::json!({
                "destination": "shop/staging", "state": "valid",
                "settings": {"from": "shop/db", "schedule": "0 6 * * *"},
                "next_run": "2026-11-21T06:00:00Z",
                "run": {"copied": "20261120T030000Z-logical", "last": {
                    "ok": false, "skipped": false, "backup_id": "20261121T030000Z-logical",
                    "started_at": "2026-11-21T06:00:00Z",
                    "error": "the copy of 20261121T030000Z-logical failed: boom"}},
            }),
            serde_json::json!({
                "destination": "shop/qa", "state": "invalid",
                "errors": [{"label": "pgbackup.sync.schedule", "value": "", "expected": "a schedule"}],
            }),
        ];
        let text = render(&r);
        assert!(
            text.contains("copy into shop/staging from shop/db (0 6 * * *, next 2026-11-21 06:00:00 UTC)\n    last 2026-11-21 06:00:00 UTC: FAILED: the copy of 20261121T030000Z-logical failed: boom\n"),
            "{text}"
        );
        assert!(
            text.contains("copy into shop/qa: invalid\n    label pgbackup.sync.schedule=\"\" is not valid: expected a schedule\n"),
            "{text}"
        );
    }

    #[test]
    fn table_shows_valid_and_invalid_targets() {
        let now = DateTime::parse_from_rfc3339("2026-11-20T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let r = report(
            "controller",
            &[
                target("db", &[("pgbackup.databases", "app,audit")]),
                target("old", &[("pgbackup.schedule", "not-a-cron")]),
            ],
            DockerView {
                connected: true,
                ..Default::default()
            },
            now,
            Tz::UTC,
        );
        let text = render(&r);
        let expected = "\
TARGET    CONTAINER   STATE    SCHEDULE  NEXT RUN                 LAST RUN  RESULT  SIZE  TOOK  METHOD/DATABASES
shop/db   shop-db-1   valid    @daily    2026-11-21 00:00:00 UTC  -         -       -     -     exec/app,audit
shop/old  shop-old-1  invalid  -         -                        -         -       -     -     -
    label pgbackup.schedule=\"not-a-cron\" is not valid: expected a cron expression with 5 fields (minute precision) or 6 (with seconds first), @hourly, @daily, @weekly, @monthly, @yearly, or off (it has 1 fields)
";
        assert_eq!(text, expected);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["targets"][0]["next_run"], "2026-11-21T00:00:00Z");
        assert_eq!(
            json["targets"][1]["errors"][0]["label"],
            "pgbackup.schedule"
        );
    }

    #[test]
    fn the_last_run_and_a_running_job_show_in_the_zone_of_tz() {
        let now = DateTime::parse_from_rfc3339("2026-11-20T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        let mut r = report(
            "controller",
            &[target("db", &[]), target("wh", &[])],
            DockerView {
                connected: true,
                ..Default::default()
            },
            now,
            tz,
        );
        r.targets[0]["run"] = serde_json::json!({
            "last": {"ok": false, "kind": "logical", "started_at": "2026-11-20T09:00:00Z",
                     "bytes": 0, "duration_seconds": 2.5,
                     "error": "pg_dump of database \"app\" failed (exit code 1): boom"},
        });
        r.targets[1]["run"] = serde_json::json!({
            "running": {"kind": "physical", "trigger": "manual", "started_at": "2026-11-20T09:59:00Z"},
            "last": {"ok": true, "kind": "logical", "started_at": "2026-11-19T23:00:00Z",
                     "bytes": 3145728, "duration_seconds": 12.0},
        });
        r.targets[1]["run"]["drills"]["logical"] = serde_json::json!({
            "ok": false, "started_at": "2026-11-20T04:30:00Z", "backup_id": "20261120T030000Z-logical",
            "duration_seconds": 41.0, "error": "the restore does not match the backup's facts: database \"shop\": table public.orders has 9 rows restored, 10 recorded"});
        let text = render(&r);
        assert!(
            text.contains("drill (logical): FAILED 2026-11-20 05:30:00 CET, backup 20261120T030000Z-logical, 41.0s: the restore does not match the backup's facts: database \"shop\": table public.orders has 9 rows restored, 10 recorded"),
            "{text}"
        );
        let text: String = text
            .lines()
            .filter(|l| !l.contains("drill:"))
            .map(|l| format!("{l}\n"))
            .collect();
        let lines: Vec<&str> = text.lines().collect();
        // Columns are separated by two or more spaces.
        let cols = |l: &str| -> Vec<String> {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(String::from)
                .collect()
        };
        assert_eq!(cols(lines[0])[5..9], ["LAST RUN", "RESULT", "SIZE", "TOOK"]);
        assert_eq!(
            cols(lines[1])[4..9],
            [
                "2026-11-21 00:00:00 CET",
                "2026-11-20 10:00:00 CET",
                "FAILED logical",
                "-",
                "2.5s"
            ],
            "{text}"
        );
        assert_eq!(
            lines[2].trim(),
            "last backup failed: pg_dump of database \"app\" failed (exit code 1): boom"
        );
        assert_eq!(
            cols(lines[3])[5..9],
            ["2026-11-20 10:59:00 CET", "running (physical)", "-", "-"],
            "{text}"
        );
    }

    #[test]
    fn fallback_and_disconnected_are_said() {
        let r = report(
            "docker",
            &[],
            DockerView {
                connected: false,
                last_error: Some("socket gone".into()),
                ..Default::default()
            },
            Utc::now(),
            Tz::UTC,
        );
        let text = render(&r);
        assert!(text.contains("no controller answered"));
        assert!(text.contains("socket gone"));
        assert!(text.contains("no containers with the label"));
    }
}
