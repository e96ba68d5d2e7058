//! Property tests of every parser that takes outside input: labels, environment, backup
//! references and ids, manifest JSON, compose YAML edits, the SQL rewriter, PGBACKUP_SCOPE. No
//! input may panic; what parses must round-trip. Bounded (a fixed number of cases each), so they
//! run in `make test` and CI. Cases proptest finds are kept in `proptest-regressions/` and replayed
//! first on every run.

use std::collections::HashMap;
use std::path::PathBuf;

use pgbackup::config::labels::{self, KNOWN};
use pgbackup::config::scope;
use pgbackup::config::{Config, Defaults, VARIABLES};
use pgbackup::model::TargetId;
use pgbackup::model::layout::{BackupId, Kind};
use pgbackup::model::manifest::Manifest;
use pgbackup::restore::BackupRef;
use pgbackup::restore::sql::{Rewrite, Rewriter};
use proptest::prelude::*;

/// Strings people (and typos) put in labels and variables: printable, unicode, control chars.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~]{0,40}",
        "\\PC{0,20}",
        "[0-9a-z:@*/ .,=-]{0,30}",
        Just(String::new()),
        Just("postgres://u:p@h/db".to_string()),
    ]
}

const MANIFEST: &str = r#"{
  "format_version": 1, "backup_id": "20261120T030000.123Z-0a1b2c-logical", "kind": "logical",
  "target": "p/db", "prefix": "p/db/20261120T030000.123Z-0a1b2c-logical", "container": "c",
  "method": "exec", "format": "custom", "compression": "zstd:3",
  "postgres": {"server_version": "17.2", "major": 17, "dump_tool": "pg_dump (PostgreSQL) 17.2"},
  "databases": ["app"],
  "objects": [{"name": "app.dump.zst", "kind": "database", "database": "app", "size": 10,
               "raw_size": 20, "sha256": "00"}],
  "started_at": "2026-11-20T03:00:00Z", "finished_at": "2026-11-20T03:00:01Z",
  "tool": {"name": "pgbackup", "version": "0.1.0"}
}"#;

const COMPOSE: &str = "services:\n  db:\n    image: postgres:17\n    volumes:\n      - pgdata:/var/lib/postgresql/data\nvolumes:\n  pgdata:\n";

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn labels_never_panic_and_errors_name_a_label(
        pairs in proptest::collection::vec((prop::sample::select(KNOWN), value()), 0..8),
        extra in "pgbackup\\.[a-z._]{0,12}",
        extra_value in value(),
    ) {
        let mut map: HashMap<String, String> =
            pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        map.insert(extra, extra_value);
        map.insert("pgbackup.enable".into(), "true".into());
        let id = TargetId { project: Some("shop".into()), service: "db".into() };
        let defaults = Defaults::from_map(&HashMap::new()).unwrap();
        match labels::parse(&id, &map, &HashMap::new(), &defaults) {
            Ok(spec) => {
                prop_assert!(!spec.prefix.is_empty());
                prop_assert!(spec.prefix.split('/').all(|s| !s.is_empty() && s != "." && s != ".."));
            }
            Err(errors) => {
                prop_assert!(!errors.is_empty());
                for e in errors {
                    prop_assert!(e.label.starts_with("pgbackup."), "{e}");
                }
            }
        }
        let _ = labels::near_misses(&map);
    }

    #[test]
    fn environment_never_panics_and_names_the_variable(
        pairs in proptest::collection::vec((prop::sample::select(VARIABLES), value()), 0..10),
    ) {
        let mut map: HashMap<String, String> =
            pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        map.entry("S3_BUCKET".into()).or_insert_with(|| "b".into());
        if let Err(e) = Config::from_map(&map) {
            let text = e.to_string();
            prop_assert!(VARIABLES.iter().any(|v| text.contains(v)), "{text}");
        }
    }

    #[test]
    fn backup_references_never_panic(s in value(), t in "[a-z0-9/._-]{0,60}") {
        let _ = s.parse::<BackupRef>();
        let _ = t.parse::<BackupRef>();
        let _ = s.parse::<BackupId>();
        let _ = pgbackup::restore::check_bucket_of(&s, "s3://pgbackup");
    }

    #[test]
    fn backup_ids_round_trip(ms in 0i64..4_102_444_800_000, tag in 0u32..0x100_0000, physical in any::<bool>()) {
        let kind = if physical { Kind::Physical } else { Kind::Logical };
        let t = chrono::DateTime::from_timestamp_millis(ms).unwrap();
        let id = BackupId::tagged(t, kind, tag);
        prop_assert_eq!(id.to_string().parse::<BackupId>().unwrap(), id);
        let old = BackupId::new(t, kind);
        prop_assert_eq!(old.to_string().parse::<BackupId>().unwrap(), old);
    }

    #[test]
    fn manifests_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200), cut in 0usize..800, flip in 0usize..800) {
        let _ = Manifest::from_json(&bytes);
        let mut m = MANIFEST.as_bytes().to_vec();
        let _ = Manifest::from_json(&m[..cut.min(m.len())]);
        let i = flip % m.len();
        m[i] = m[i].wrapping_add(1);
        let _ = Manifest::from_json(&m);
    }

    #[test]
    fn compose_edits_never_panic(cut in 0usize..200, insert in value(), at in 0usize..200) {
        let mut text = COMPOSE[..cut.min(COMPOSE.len())].to_string();
        let at = at.min(text.len());
        if text.is_char_boundary(at) {
            text.insert_str(at, &insert);
        }
        let files = vec![(PathBuf::from("/p/compose.yaml"), PathBuf::from("/p/compose.yaml"), text)];
        if let Ok(edit) = pgbackup::restore::physical::compose::plan_edit(&files, "db", "/var/lib/postgresql/data", |old, _| format!("{old}-restored")) {
            prop_assert!(edit.after.contains(&edit.new_key));
        }
    }

    #[test]
    fn the_sql_rewriter_never_panics(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..12), database_only in any::<bool>()) {
        let mut r = Rewriter::new(Rewrite { from: "app".into(), to: "pgbackup_restore_x_1".into(), server_major: 13, after_connect: "ALTER SCHEMA public OWNER TO postgres;\n".into(), database_only });
        let mut out = Vec::new();
        for c in &chunks {
            if r.feed(c, &mut out).is_err() {
                return Ok(());
            }
        }
        let _ = r.finish(&mut out);
    }

    #[test]
    fn scopes_round_trip(s in value()) {
        if let Ok(scope::Setting::Explicit(sc)) = scope::Setting::parse(&s) {
            prop_assert_eq!(scope::Setting::parse(&sc.to_string()).unwrap(), scope::Setting::Explicit(sc));
        }
    }
}
