use std::sync::{Arc, Mutex};

use axum::http::StatusCode;

use super::*;

#[test]
fn levels_choose_events() {
    use EventKind::*;
    let table = [
        (Level::Failure, [true, false, false]),
        (Level::Success, [true, true, false]),
        (Level::All, [true, true, true]),
    ];
    for (level, expected) in table {
        let got = [BackupFailed, BackupSucceeded, RetentionDeleted].map(|e| level.includes(e));
        assert_eq!(got, expected, "{level:?}");
    }
    assert_eq!(Level::parse(" ALL "), Some(Level::All));
    assert_eq!(Level::parse("errors"), None);
}

#[test]
fn scrub_replaces_the_longest_secret_first() {
    let secrets = vec!["https://h/abc/def".to_string(), "abc".into(), "".into()];
    assert_eq!(
        scrub(
            "error sending request for url (https://h/abc/def): abc",
            &secrets
        ),
        "error sending request for url (***): ***"
    );
}

#[test]
fn retention_events_list_what_was_deleted() {
    let e = Event {
        event: EventKind::RetentionDeleted,
        target: "shop/db".into(),
        kind: Kind::Logical,
        trigger: "schedule".into(),
        backup_id: None,
        databases: vec![],
        bytes: 0,
        duration_seconds: 0.0,
        error: None,
        deleted: vec!["a".into(), "b".into()],
        time: Utc::now(),
    };
    assert_eq!(
        e.text(100),
        "🗑 pgbackup: retention deleted 2 backup(s) of shop/db\na, b"
    );
}

/// A local HTTP receiver answering each request with the next status of `answers` (200 once
/// they run out), recording what arrived.
async fn receiver(answers: Vec<u16>) -> (String, Arc<Mutex<Vec<(String, String)>>>) {
    let got: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let answers = Arc::new(Mutex::new(answers));
    let (g, a) = (got.clone(), answers.clone());
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri, body: String| {
        let (g, a) = (g.clone(), a.clone());
        async move {
            g.lock().unwrap().push((uri.to_string(), body));
            let mut a = a.lock().unwrap();
            let code = if a.is_empty() { 200 } else { a.remove(0) };
            StatusCode::from_u16(code).unwrap()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("127.0.0.1:{}", addr.port()), got)
}

fn notifier(urls: &str, ping: Option<&str>) -> (Notifier, Counters) {
    let counters = Counters::default();
    let settings = Settings {
        services: service::split_list(urls)
            .iter()
            .map(|u| service::parse(u).unwrap())
            .collect(),
        level: Level::Failure,
        ping: ping.map(|p| PingUrl::parse(p).unwrap()),
    };
    let mut n = Notifier::new(settings, counters.clone());
    n.delays = vec![Duration::from_millis(10), Duration::from_millis(10)];
    (n, counters)
}

fn failed() -> Event {
    Event {
        event: EventKind::BackupFailed,
        target: "shop/db".into(),
        kind: Kind::Logical,
        trigger: "once".into(),
        backup_id: None,
        databases: vec![],
        bytes: 0,
        duration_seconds: 1.0,
        error: Some("boom".into()),
        deleted: vec![],
        time: Utc::now(),
    }
}

fn count(c: &Counters, service: &str, result: &str) -> u64 {
    c.notifications
        .get_or_create(&NotifyLabels {
            service: service.into(),
            event: "backup.failed".into(),
            result: result.into(),
        })
        .get()
}

#[tokio::test]
async fn a_busy_service_is_tried_again_and_a_refusal_is_not() {
    let (busy, busy_got) = receiver(vec![503, 429]).await;
    let (refusing, refusing_got) = receiver(vec![400, 400, 400]).await;
    let (n, c) = notifier(
        &format!("generic+http://{busy}/hook generic+http://{refusing}/hook"),
        None,
    );
    n.notify(failed());
    assert_eq!(n.flush(Duration::from_secs(10)).await, 0);
    assert_eq!(busy_got.lock().unwrap().len(), 3, "503, 429, then 200");
    assert_eq!(refusing_got.lock().unwrap().len(), 1, "a 400 is final");
    assert_eq!(count(&c, "webhook", "sent"), 1);
    assert_eq!(count(&c, "webhook", "failed"), 1);
    let body: serde_json::Value = serde_json::from_str(&busy_got.lock().unwrap()[0].1).unwrap();
    assert_eq!(body["error"], "boom");
}

#[tokio::test]
async fn an_unreachable_service_neither_blocks_nor_fails_the_caller() {
    // A port nothing listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (n, c) = notifier(&format!("generic+http://127.0.0.1:{closed}/x"), None);
    let t = std::time::Instant::now();
    n.notify(failed());
    assert!(
        t.elapsed() < Duration::from_millis(50),
        "notify returns at once"
    );
    n.flush(Duration::from_secs(10)).await;
    assert_eq!(count(&c, "webhook", "failed"), 1);
}

#[tokio::test]
async fn pings_arrive_in_order_start_then_outcome() {
    let (hc, got) = receiver(vec![]).await;
    let (n, c) = notifier("", Some(&format!("http://{hc}/ping/0a1b2c3d")));
    let url = n.ping_url(None).cloned();
    let start = n.ping("shop/db", url.as_ref(), Signal::Start, None);
    n.ping(
        "shop/db",
        url.as_ref(),
        Signal::Fail {
            error: "boom".into(),
        },
        start,
    );
    n.flush(Duration::from_secs(10)).await;
    let got = got.lock().unwrap().clone();
    assert_eq!(
        got,
        vec![
            ("/ping/0a1b2c3d/start".to_string(), String::new()),
            ("/ping/0a1b2c3d/fail".to_string(), "boom".to_string())
        ]
    );
    let sent = |signal: &str| {
        c.pings
            .get_or_create(&PingLabels {
                target: "shop/db".into(),
                signal: signal.into(),
                result: "sent".into(),
            })
            .get()
    };
    assert_eq!((sent("start"), sent("fail")), (1, 1));
}

#[test]
fn ping_requests_follow_each_convention() {
    let hc = PingUrl::parse("https://hc-ping.com/5f1e-uuid/").unwrap();
    let url = |s: &Signal| hc.request(s).unwrap().url.to_string();
    assert_eq!(url(&Signal::Start), "https://hc-ping.com/5f1e-uuid/start");
    assert_eq!(
        url(&Signal::Success { duration_ms: 5 }),
        "https://hc-ping.com/5f1e-uuid/"
    );
    assert_eq!(
        url(&Signal::Fail { error: "x".into() }),
        "https://hc-ping.com/5f1e-uuid/fail"
    );
    assert_eq!(hc.shown(), "healthchecks-style ping to hc-ping.com");
    assert!(!format!("{hc:?}").contains("5f1e"));

    let kuma = PingUrl::parse("https://kuma.example.com/api/push/Tok3n?status=up").unwrap();
    assert_eq!(kuma.request(&Signal::Start), None);
    assert_eq!(
        kuma.request(&Signal::Success { duration_ms: 1234 })
            .unwrap()
            .url
            .to_string(),
        "https://kuma.example.com/api/push/Tok3n?status=up&msg=OK&ping=1234"
    );
    let down = kuma
        .request(&Signal::Fail {
            error: "disk full".into(),
        })
        .unwrap();
    assert_eq!(down.method, reqwest::Method::GET);
    assert_eq!(
        down.url.to_string(),
        "https://kuma.example.com/api/push/Tok3n?status=down&msg=disk+full&ping="
    );
    assert_eq!(kuma.shown(), "Uptime Kuma ping to kuma.example.com");
    for bad in ["hc-ping.com/uuid", "ftp://x/y", "mailto:someone"] {
        let e = PingUrl::parse(bad).unwrap_err();
        assert!(!e.contains(bad), "{e}");
    }
}
