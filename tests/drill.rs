//! End-to-end: restore drills. The latest backup of a kitchen-sink source (roles, several
//! databases with odd names, large objects, a million rows) is restored into a throwaway server
//! from the source's own image and compared with the row counts the backup recorded in its own
//! snapshot: scheduled drills of an exec and a connect target pass and show in status and
//! metrics; a damaged object and a tampered count fail and say why; a base backup is started as
//! a cluster and checked; a sidecar killed mid-drill
//! leaves a server that the next start removes. No drill leaves a server behind.

mod common;

use std::time::Duration;

use common::{Cleanup, docker, fixture, stderr, stdout, wait_until};
use serde_json::Value;

/// Throwaway servers of drills of `target`, running or not.
fn drill_servers(target: &str) -> Vec<String> {
    let out = docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=pgbackup-drill.of={target}"),
    ]);
    out.lines().map(String::from).collect()
}

/// Backs `target` up through the stack's sidecar; the backup's `pgctl list` entry.
fn backup(s: &common::Stack, target: &str) -> Value {
    let o = s.pgctl(&["backup", target]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    s.list(target).pop().expect("a committed backup")
}

/// Flips one byte in the middle of backup `b`'s dump of the shop database, after its commit;
/// returns the object's name.
fn damage_shop_dump(s: &common::Stack, b: &Value) -> String {
    let object = b["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["database"] == fixture::SHOP)
        .unwrap()["name"]
        .as_str()
        .unwrap()
        .to_string();
    let cfg = common::s3_config(s);
    let key = format!("{}/{object}", b["prefix"].as_str().unwrap());
    let mut bytes = common::get(&cfg, &key);
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    common::put(&cfg, &key, bytes);
    object
}

#[test]
fn scheduled_drills_of_exec_and_connect_targets_pass_and_show_in_status_and_metrics() {
    let s = stack!();
    let image = common::postgres_image();
    // Every minute: the nightly drill, at test speed (not more often: the drills share the
    // sidecar's job slots with every other test of this file).
    let every = ("pgbackup.drill.schedule", "30 * * * * *");
    let exec = fixture::source(&s, "drill-exec", &image, &[every]);
    let exec_guard = Cleanup(exec.clone());
    let conn = fixture::source(
        &s,
        "drill-conn",
        &image,
        &[("pgbackup.method", "connect"), every],
    );
    let conn_guard = Cleanup(conn.clone());

    for t in [&exec, &conn] {
        let b = backup(&s, t);
        let id = b["backup_id"].as_str().unwrap().to_string();
        // The kitchen sink's tables, counted in the dump's snapshot.
        let shop = &b["facts"]["databases"][fixture::SHOP]["tables"];
        assert_eq!(shop["app.events"], 1_000_000, "{b}");
        assert_eq!(b["facts"]["method"], "snapshot");
        let drill = wait_until(Duration::from_secs(300), || {
            let d = s.target(t)?["run"]["drills"]["logical"].clone();
            (d["backup_id"] == id.as_str()).then_some(d)
        })
        .unwrap_or_else(|| panic!("no scheduled drill of {t}'s backup {id}: {}", s.status()));
        assert_eq!(drill["ok"], true, "{drill}");
        assert_eq!(drill["trigger"], "schedule", "{drill}");
        assert!(
            drill["tables_checked"].as_u64().unwrap() >= 8,
            "every table of every database: {drill}"
        );
        assert!(
            drill["rows_checked"].as_u64().unwrap() > 1_000_000,
            "{drill}"
        );
        assert_eq!(
            drill["databases"].as_array().unwrap().len(),
            b["databases"].as_array().unwrap().len()
        );
    }

    // The human table has a drill line under each (the last one passed, or the next running).
    let text = stdout(&s.pgctl(&["status"]));
    for t in [&exec, &conn] {
        let mut lines = text.lines().skip_while(|l| !l.starts_with(t.as_str()));
        lines.next();
        let drill = lines.next().unwrap_or("").trim_start();
        assert!(
            drill.starts_with("drill (logical): passed") || drill.starts_with("drill: running"),
            "{text}"
        );
    }
    assert!(text.contains("drill (logical): passed"), "{text}");
    let m = s.metrics();
    for t in [&exec, &conn] {
        for needle in [
            format!(
                "pgbackup_drill_last_success_timestamp_seconds{{target=\"{t}\",kind=\"logical\"}}"
            ),
            format!("pgbackup_drill_last_duration_seconds{{target=\"{t}\",kind=\"logical\"}}"),
            format!("pgbackup_drill_last_result{{target=\"{t}\",kind=\"logical\"}} 1"),
            format!("pgbackup_drills_total{{target=\"{t}\",kind=\"logical\",result=\"passed\"}}"),
        ] {
            assert!(m.contains(&needle), "{needle} missing:\n{m}");
        }
    }

    // The sources go; a drill running now still ends and removes its server.
    drop(exec_guard);
    drop(conn_guard);
    for t in [&exec, &conn] {
        assert!(
            wait_until(Duration::from_secs(120), || drill_servers(t)
                .is_empty()
                .then_some(()))
            .is_some(),
            "a drill server of {t} was left: {:?}",
            drill_servers(t)
        );
    }
}

#[test]
fn drills_of_a_damaged_object_or_a_tampered_count_fail_and_say_why() {
    let s = stack!();
    let t = fixture::source(&s, "drill-bad", &common::postgres_image(), &[]);
    let _guard = Cleanup(t.clone());
    // A busy server: rows are written while the backup runs. The counts the backup records are
    // its own snapshot's, not the live table's, and its drill matches them.
    common::psql(
        &t,
        "postgres",
        fixture::SHOP,
        "CREATE TABLE public.busy (x int)",
    );
    let writer = {
        let t = t.clone();
        std::thread::spawn(move || {
            common::psql(
                &t,
                "postgres",
                fixture::SHOP,
                "DO $$ BEGIN FOR i IN 1..400 LOOP INSERT INTO public.busy VALUES (i); COMMIT; PERFORM pg_sleep(0.02); END LOOP; END $$",
            )
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    let b = backup(&s, &t);
    writer.join().unwrap();
    let recorded = b["facts"]["databases"][fixture::SHOP]["tables"]["public.busy"]
        .as_u64()
        .expect("the busy table is counted");
    assert_eq!(
        common::psql(
            &t,
            "postgres",
            fixture::SHOP,
            "SELECT count(*) FROM public.busy"
        ),
        "400"
    );
    assert!(
        recorded < 400,
        "the count is the dump's snapshot's ({recorded}), taken while rows were written"
    );
    let id = b["backup_id"].as_str().unwrap();
    let cfg = common::s3_config(&s);
    let dir = b["prefix"].as_str().unwrap();
    let manifest_key = format!("{dir}/manifest.json");
    let original = common::get(&cfg, &manifest_key);

    // A drill of the untouched backup passes (by hand: exit 0).
    let o = s.pgctl(&["drill", &t]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).starts_with("passed"), "{}", stdout(&o));

    // One count in the manifest says one row more than the dump holds.
    let mut m: Value = serde_json::from_slice(&original).unwrap();
    let orders = &mut m["facts"]["databases"][fixture::SHOP]["tables"]["app.orders"];
    let n = orders.as_u64().expect("orders counted");
    *orders = (n + 1).into();
    common::put(&cfg, &manifest_key, serde_json::to_vec_pretty(&m).unwrap());
    let o = s.pgctl(&["drill", &t]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    let said = stdout(&o);
    let expected = format!(
        "database \"shop\": table app.orders has {n} rows restored, {} recorded",
        n + 1
    );
    assert!(said.contains("FAILED") && said.contains(id), "{said}");
    assert!(said.contains(&expected), "{said}");
    let last = s.target(&t).unwrap()["run"]["drills"]["logical"].clone();
    assert_eq!(last["ok"], false);
    assert_eq!(last["differences"], serde_json::json!([expected]), "{last}");
    assert!(
        s.metrics().contains(&format!(
            "pgbackup_drill_last_result{{target=\"{t}\",kind=\"logical\"}} 0"
        )),
        "a failed drill shows in the metrics"
    );
    assert!(drill_servers(&t).is_empty(), "{:?}", drill_servers(&t));

    // The manifest back as it was; the shop dump damaged after the commit.
    common::put(&cfg, &manifest_key, original);
    let object = damage_shop_dump(&s, &b);
    let o = s.pgctl(&["drill", &t]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    let said = stdout(&o);
    assert!(
        said.contains(&format!("the restore of {id} failed"))
            && said.contains(&object)
            // Found by its SHA-256, or by zstd's own frame checksum before the end.
            && (said.contains("does not match the manifest") || said.contains("is damaged")),
        "the drill names the damaged object: {said}"
    );
    assert!(drill_servers(&t).is_empty(), "{:?}", drill_servers(&t));
}

#[test]
fn a_physical_drill_starts_the_cluster_from_the_base_backup_and_checks_it() {
    let s = stack!();
    let t = fixture::source(&s, "drill-phys", &common::postgres_image(), &[]);
    let _guard = Cleanup(t.clone());
    let o = s.pgctl(&["backup", "--physical", &t]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let b = s.list(&t).pop().expect("the base backup");
    assert_eq!(b["kind"], "physical");
    let dbs = b["databases"].as_array().unwrap();
    assert!(
        dbs.iter().any(|d| d == fixture::SHOP) && dbs.iter().any(|d| d == fixture::ODD),
        "the cluster's databases are recorded: {b}"
    );

    let o = s.pgctl(&["drill", &t, "--json"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    let drills = r["outcomes"][0]["result"].as_array().unwrap();
    assert_eq!(drills.len(), 1, "only a physical backup exists: {r}");
    assert_eq!(drills[0]["kind"], "physical");
    assert_eq!(drills[0]["ok"], true, "{r}");
    assert_eq!(drills[0]["backup_id"], b["backup_id"]);
    assert_eq!(
        s.target(&t).unwrap()["run"]["drills"]["physical"]["ok"],
        true
    );
    assert!(drill_servers(&t).is_empty(), "{:?}", drill_servers(&t));

    // The base backup damaged after its commit: the drill fails and names the object.
    let cfg = common::s3_config(&s);
    let object = b["objects"][0]["name"].as_str().unwrap();
    let key = format!("{}/{object}", b["prefix"].as_str().unwrap());
    let mut bytes = common::get(&cfg, &key);
    let at = bytes.len() / 3;
    bytes[at] ^= 0x55;
    common::put(&cfg, &key, bytes);
    let o = s.pgctl(&["drill", &t]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("FAILED") && stdout(&o).contains(object),
        "{}",
        stdout(&o)
    );
    assert!(drill_servers(&t).is_empty(), "{:?}", drill_servers(&t));
}

#[test]
fn a_sidecar_killed_mid_drill_leaves_a_server_that_the_next_start_removes() {
    let s = stack!();
    // A compose project of its own, and controllers scoped to it: they see no other test's
    // targets (whose drill schedules would take their job slots).
    let project = common::Project::new(
        "drill-kill",
        &format!(
            r#"services:
  db:
    image: {}
    environment:
      POSTGRES_PASSWORD: kill-password
    healthcheck:
      test: ["CMD-SHELL", "pg_isready -q -h 127.0.0.1"]
      interval: 2s
      retries: 60
    labels:
      pgbackup.enable: "true"
      pgbackup.schedule: "off"
      pgbackup.compression: "none"
      pgbackup.globals: "false"
"#,
            common::postgres_image()
        ),
    );
    let up = project.compose(&["up", "-d", "--wait"]);
    assert!(up.status.success(), "{}{}", stdout(&up), stderr(&up));
    common::psql(
        &project.container("db"),
        "postgres",
        "postgres",
        common::BIG_TABLE,
    );
    let t = format!("{}/db", project.project);
    let scope = [("PGBACKUP_SCOPE", project.project.clone())];
    let mut first = s.host_controller(&scope);
    first.wait_lists(&t);
    let url = first.url.clone();
    let o = common::host_pgctl(&["backup", "--controller", &url, &t]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));

    let target = t.clone();
    let drilling =
        std::thread::spawn(move || common::host_pgctl(&["drill", "--controller", &url, &target]));
    // Killed once its server runs and the restore has started loading.
    let server = wait_until(Duration::from_secs(240), || {
        drill_servers(&t).into_iter().next()
    })
    .expect("the drill started a server");
    std::thread::sleep(Duration::from_secs(8));
    let _ = first.child.kill(); // SIGKILL: no clean-up of its own
    let _ = first.child.wait();
    let o = drilling.join().unwrap();
    assert!(!o.status.success(), "the drill was cut off: {}", stdout(&o));
    assert_eq!(
        drill_servers(&t),
        std::slice::from_ref(&server),
        "the killed sidecar's server is still there"
    );

    let second = s.host_controller(&scope);
    assert!(
        wait_until(Duration::from_secs(60), || drill_servers(&t)
            .is_empty()
            .then_some(()))
        .is_some(),
        "the next start removes {server}"
    );
    second.wait_lists(&t);
    assert!(
        second
            .log()
            .contains("Removed a drill server left by an earlier run."),
        "{}",
        second.log()
    );
}

/// A scheduled copy (seed 003's shared copy): a compose service labelled
/// `pgbackup.sync.from=<source>` gets the source's latest backup on its schedule, with its
/// post-SQL (anonymising) run afterwards; nothing new means nothing done (local changes stay);
/// a new backup replaces it; a damaged backup fails and leaves the copy as it was.
#[test]
fn a_scheduled_copy_refreshes_staging_runs_its_post_sql_skips_when_nothing_is_new_and_keeps_staging_when_it_fails()
 {
    let s = stack!();
    let source = fixture::source(&s, "sync-src", &common::postgres_image(), &[]);
    let _source_guard = Cleanup(source.clone());
    let first = backup(&s, &source);

    let project = common::Project::new("sync", "services: {}\n");
    let post_sql = project.dir.join("post-sql");
    std::fs::create_dir_all(&post_sql).unwrap();
    std::fs::write(
        post_sql.join("10-anonymise.sql"),
        "\\connect shop\nUPDATE app.customers SET email = 'anon-' || id || '@example.invalid';\n",
    )
    .unwrap();
    let compose = format!(
        r#"services:
  staging:
    image: {image}
    environment:
      POSTGRES_PASSWORD: staging-password
    healthcheck:
      test: ["CMD-SHELL", "pg_isready -q -h 127.0.0.1"]
      interval: 2s
      retries: 60
    labels:
      pgbackup.sync.from: "{source}"
      pgbackup.sync.schedule: "*/10 * * * * *"
      pgbackup.sync.post_sql: "{dir}"
"#,
        image = common::postgres_image(),
        dir = post_sql.display()
    );
    std::fs::write(project.dir.join("compose.yaml"), compose).unwrap();
    let up = project.compose(&["up", "-d", "--wait"]);
    assert!(up.status.success(), "{}{}", stdout(&up), stderr(&up));
    let staging = project.container("staging");
    let dest = format!("{}/staging", project.project);
    let copy_state = || -> Option<Value> {
        s.status()["syncs"]
            .as_array()?
            .iter()
            .find(|d| d["destination"] == dest.as_str())
            .cloned()
    };
    let q = |sql: &str| common::psql(&staging, "postgres", "shop", sql);

    // The first copy: every row, then the post-SQL.
    let copied = wait_until(Duration::from_secs(240), || {
        let d = copy_state()?;
        (d["run"]["copied"] == first["backup_id"]).then_some(d)
    })
    .unwrap_or_else(|| panic!("no copy into {dest}: {}", s.status()["syncs"]));
    assert_eq!(copied["run"]["last"]["ok"], true, "{copied}");
    assert_eq!(q("SELECT count(*) FROM app.orders"), "30000");
    assert_eq!(q("SELECT count(*) FROM app.events"), "1000000");
    assert_eq!(
        q("SELECT count(*) FROM app.customers WHERE email NOT LIKE 'anon-%'"),
        "0",
        "the post-SQL ran on the copy"
    );
    assert_ne!(
        common::psql(
            &source,
            "postgres",
            "shop",
            "SELECT count(*) FROM app.customers WHERE email NOT LIKE 'anon-%'"
        ),
        "0",
        "the source is never touched"
    );

    // Nothing new: the next runs skip, and what staging did locally stays.
    q("CREATE TABLE public.staging_marker AS SELECT 1 AS x");
    let skipped = wait_until(Duration::from_secs(120), || {
        let d = copy_state()?;
        let l = &d["run"]["last"];
        let later = l["started_at"].as_str()? > copied["run"]["last"]["started_at"].as_str()?;
        (later && l["skipped"] == true).then_some(d)
    })
    .expect("a later run skips");
    assert_eq!(skipped["run"]["last"]["ok"], true);
    assert_eq!(q("SELECT count(*) FROM public.staging_marker"), "1");
    let text = stdout(&s.pgctl(&["status"]));
    assert!(
        text.contains(&format!("copy into {dest} from {source}")) && text.contains("nothing new"),
        "{text}"
    );

    // A new backup of the source is copied: staging's own change is replaced.
    common::psql(
        &source,
        "postgres",
        "shop",
        "CREATE TABLE app.fresh AS SELECT 42 AS answer",
    );
    let second = backup(&s, &source);
    wait_until(Duration::from_secs(180), || {
        (copy_state()?["run"]["copied"] == second["backup_id"]).then_some(())
    })
    .expect("the new backup is copied");
    assert_eq!(q("SELECT answer FROM app.fresh"), "42");
    assert_eq!(
        q("SELECT count(*) FROM pg_tables WHERE tablename = 'staging_marker'"),
        "0"
    );

    // A backup damaged after its commit: the copy fails and staging keeps the last good copy.
    common::psql(
        &source,
        "postgres",
        "shop",
        "CREATE TABLE app.fresher AS SELECT 1 AS x",
    );
    let third = backup(&s, &source);
    let object = damage_shop_dump(&s, &third);
    let failed = wait_until(Duration::from_secs(180), || {
        let d = copy_state()?;
        let l = &d["run"]["last"];
        (l["backup_id"] == third["backup_id"] && l["ok"] == false).then_some(d)
    })
    .expect("the copy of the damaged backup fails");
    let error = failed["run"]["last"]["error"].as_str().unwrap();
    assert!(error.contains(&object), "{error}");
    assert_eq!(failed["run"]["copied"], second["backup_id"]);
    assert_eq!(q("SELECT answer FROM app.fresh"), "42");
    assert_eq!(
        q("SELECT count(*) FROM pg_tables WHERE tablename = 'fresher'"),
        "0",
        "nothing of the failed copy is left"
    );
    assert_eq!(q("SELECT count(*) FROM app.orders"), "30000");
    // Stop copying before the project goes (the failed backup would be tried every 10 s).
    drop(project);
}
