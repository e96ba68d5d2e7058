use super::*;
use crate::model::layout::Kind;

fn event(kind: EventKind) -> Event {
    Event {
        event: kind,
        target: "shop/db".into(),
        kind: Kind::Logical,
        trigger: "schedule".into(),
        backup_id: (kind == EventKind::BackupSucceeded).then(|| "20261122T010203Z-logical".into()),
        databases: vec!["app".into(), "Odd Name".into()],
        bytes: 3 * 1024 * 1024,
        duration_seconds: 4.31,
        error: (kind == EventKind::BackupFailed)
            .then(|| "pg_dump of database \"app\" failed (exit code 1): boom".into()),
        deleted: vec![],
        time: chrono::DateTime::parse_from_rfc3339("2026-11-22T01:02:03Z")
            .unwrap()
            .into(),
    }
}

#[test]
fn a_list_splits_on_spaces_newlines_and_commas_but_keeps_commas_inside_a_url() {
    assert_eq!(
        split_list(
            "generic://hooks.example.com/a?x=1, slack://T1/B2/C3\n telegram://1:AB@telegram?chats=@ops,42,ntfy://ntfy.sh/t ,"
        ),
        vec![
            "generic://hooks.example.com/a?x=1",
            "slack://T1/B2/C3",
            "telegram://1:AB@telegram?chats=@ops,42",
            "ntfy://ntfy.sh/t",
        ]
    );
    assert!(split_list("  ").is_empty());
}

#[test]
fn each_scheme_becomes_its_service_url() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "generic://hooks.example.com/notify?token=abc",
            "https://hooks.example.com/notify?token=abc",
            "webhook on hooks.example.com",
        ),
        (
            "generic+http://receiver:8080/in",
            "http://receiver:8080/in",
            "webhook on receiver:8080",
        ),
        (
            "https://hooks.example.com/x",
            "https://hooks.example.com/x",
            "webhook on hooks.example.com",
        ),
        (
            "slack://hook:T000-B000-XXXX@webhook",
            "https://hooks.slack.com/services/T000/B000/XXXX",
            "slack",
        ),
        (
            "slack://T000/B000/XXXX",
            "https://hooks.slack.com/services/T000/B000/XXXX",
            "slack",
        ),
        (
            "discord://tok3n@123456",
            "https://discord.com/api/webhooks/123456/tok3n",
            "discord",
        ),
        (
            "ntfy://ntfy.sh/backups",
            "https://ntfy.sh/backups",
            "ntfy on ntfy.sh",
        ),
        (
            "ntfy://me:pw@push.example.com:8443/ops?scheme=http",
            "http://push.example.com:8443/ops",
            "ntfy on push.example.com:8443",
        ),
        (
            "telegram://110201543:AAHdqTcv@telegram?chats=@ops",
            "https://api.telegram.org/bot110201543:AAHdqTcv/sendMessage",
            "telegram",
        ),
    ];
    for (input, url, shown) in cases {
        let c = parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
        let r = c.requests(&event(EventKind::BackupFailed));
        assert_eq!(r[0].url.as_str(), *url, "{input}");
        assert_eq!(r[0].method, reqwest::Method::POST);
        assert_eq!(c.shown(), *shown, "{input}");
    }
}

#[test]
fn level_and_headers_are_pgbackups_and_not_sent_on() {
    let c = parse("generic://h.example.com/p?level=success&@Authorization=Bearer%20s3cret&keep=1")
        .unwrap();
    assert_eq!(c.level, Some(Level::Success));
    let r = &c.requests(&event(EventKind::BackupSucceeded))[0];
    assert_eq!(r.url.as_str(), "https://h.example.com/p?keep=1");
    assert_eq!(
        r.headers,
        vec![("Authorization".to_string(), "Bearer s3cret".to_string())]
    );
    assert!(c.wants(EventKind::BackupSucceeded, Level::Failure));
    assert!(!c.wants(EventKind::RetentionDeleted, Level::Failure));
    let plain = parse("generic://h.example.com/p").unwrap();
    assert!(!plain.wants(EventKind::BackupSucceeded, Level::Failure));
    assert!(plain.wants(EventKind::BackupSucceeded, Level::All));
}

#[test]
fn the_webhook_body_is_the_event() {
    let c = parse("generic+http://receiver/in").unwrap();
    let r = &c.requests(&event(EventKind::BackupFailed))[0];
    let Body::Json(v) = &r.body else {
        panic!("not JSON: {:?}", r.body)
    };
    assert_eq!(v["event"], "backup.failed");
    assert_eq!(v["target"], "shop/db");
    assert_eq!(v["kind"], "logical");
    assert_eq!(v["trigger"], "schedule");
    assert_eq!(v["databases"][1], "Odd Name");
    assert_eq!(v["bytes"], 3 * 1024 * 1024);
    assert_eq!(v["duration_seconds"], 4.31);
    assert!(v["error"].as_str().unwrap().contains("boom"));
    assert_eq!(v["backup_id"], serde_json::Value::Null);
    assert_eq!(v["time"], "2026-11-22T01:02:03Z");
}

#[test]
fn chat_services_get_a_readable_message() {
    let failed = event(EventKind::BackupFailed);
    let slack = &parse("slack://A/B/C").unwrap().requests(&failed)[0];
    assert_eq!(
        slack.body,
        Body::Json(
            json!({ "text": "❌ pgbackup: logical backup of shop/db failed\nAfter 4.3 s (schedule run): pg_dump of database \"app\" failed (exit code 1): boom" })
        )
    );
    let ok = event(EventKind::BackupSucceeded);
    let discord = &parse("discord://t@1").unwrap().requests(&ok)[0];
    assert_eq!(
        discord.body,
        Body::Json(
            json!({ "content": "✅ pgbackup: logical backup of shop/db succeeded\n20261122T010203Z-logical (2 database(s), 3.0 MiB, 4.3 s, schedule run)" })
        )
    );
    let tg = parse("telegram://1:AB@telegram?chats=@ops,42").unwrap();
    let r = tg.requests(&failed);
    assert_eq!(r.len(), 2);
    let Body::Json(v) = &r[1].body else { panic!() };
    assert_eq!(v["chat_id"], "42");
    let ntfy = &parse("ntfy://u:p%40ss@ntfy.example.com/t")
        .unwrap()
        .requests(&failed)[0];
    assert!(ntfy.headers.contains(&("Priority".into(), "high".into())));
    assert!(
        ntfy.headers
            .contains(&("Title".into(), "logical backup of shop/db failed".into()))
    );
    // u:p@ss
    assert!(
        ntfy.headers
            .contains(&("Authorization".into(), "Basic dTpwQHNz".into()))
    );
    assert!(matches!(&ntfy.body, Body::Text(t) if t.contains("boom")));
}

#[test]
fn long_errors_fit_the_services_limits() {
    let mut e = event(EventKind::BackupFailed);
    e.error = Some("x".repeat(10_000));
    let r = &parse("discord://t@1").unwrap().requests(&e)[0];
    let Body::Json(v) = &r.body else { panic!() };
    let content = v["content"].as_str().unwrap();
    assert_eq!(content.chars().count(), 2000);
    assert!(content.ends_with('…'));
}

#[test]
fn bad_urls_are_refused_without_repeating_them() {
    for bad in [
        "hooks.example.com/x",
        "smtp://user:s3cretpw@mail.example.com",
        "slack://hook:onlyonepart@webhook",
        "discord://123456",
        "telegram://s3cretbot@telegram",
        "telegram://1:s3cret@telegram",
        "ntfy://ntfy.sh",
        "ntfy://ntfy.sh/t?scheme=ftp",
        "generic://h.example.com/p?level=loud&s3cret=1",
        "generic://h.example.com/p?@Bad%20Header=s3cret",
    ] {
        let e = parse(bad).expect_err(bad);
        assert!(!e.contains("s3cret"), "{bad}: {e}");
        assert!(!e.contains(bad), "{bad}: {e}");
    }
}

#[test]
fn secrets_cover_every_part_of_the_url() {
    let c = parse("ntfy://me:hunter22@push.example.com/topic-x?token=tk_abcdef").unwrap();
    let s = c.secrets();
    assert!(s.contains(&"hunter22".to_string()), "{s:?}");
    assert!(s.contains(&"tk_abcdef".to_string()), "{s:?}");
    assert!(s.contains(&"topic-x".to_string()), "{s:?}");
    let w = parse("generic://h.example.com/hook/SECRETPATH?@X-Key=k3y-value").unwrap();
    let s = w.secrets();
    assert!(s.contains(&"SECRETPATH".to_string()), "{s:?}");
    assert!(s.contains(&"k3y-value".to_string()), "{s:?}");
}
