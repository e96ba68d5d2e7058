//! Storage layout (README "Storage layout"): `[S3_PREFIX/]<target prefix>/<backup-id>/<object>`, backup ids,
//! object names. Pure.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::{Compression, Format};

pub const MANIFEST: &str = "manifest.json";
pub const SUMS: &str = "SHA256SUMS";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Logical,
    Physical,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Logical => "logical",
            Kind::Physical => "physical",
        })
    }
}

/// `YYYYMMDDTHHMMSS.mmmZ-<tag>-logical|physical`: sorts chronologically as a string. The tag
/// (six hex digits, random per run) makes the ids of two writers unique even in the same
/// millisecond: two sidecars on one bucket, or an abandoned job and its successor, never write
/// into one folder. Ids written before tags existed (`YYYYMMDDTHHMMSSZ-logical`) still parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackupId {
    pub time: DateTime<Utc>,
    pub tag: Option<u32>,
    pub kind: Kind,
}

const TIME_FORMAT: &str = "%Y%m%dT%H%M%SZ";
const TIME_FORMAT_MS: &str = "%Y%m%dT%H%M%S%.3fZ";
const TAG_MAX: u32 = 0xff_ffff;

impl BackupId {
    /// A second-precision id without a tag (the format of backups before tags existed).
    pub fn new(time: DateTime<Utc>, kind: Kind) -> BackupId {
        let time = DateTime::from_timestamp(time.timestamp(), 0).expect("in range");
        BackupId {
            time,
            tag: None,
            kind,
        }
    }

    /// The id of a new backup: millisecond time plus a random tag.
    pub fn unique(time: DateTime<Utc>, kind: Kind) -> BackupId {
        let mut b = [0u8; 4];
        // The OS random source; should it ever fail, the time's nanoseconds and the process id
        // still separate writers.
        if getrandom::fill(&mut b).is_err() {
            b = (time.timestamp_subsec_nanos() ^ std::process::id().rotate_left(12)).to_le_bytes();
        }
        BackupId::tagged(time, kind, u32::from_le_bytes(b))
    }

    /// `unique` with a given tag (tests).
    pub fn tagged(time: DateTime<Utc>, kind: Kind, tag: u32) -> BackupId {
        let ms = time.timestamp_millis();
        BackupId {
            time: DateTime::from_timestamp_millis(ms).expect("in range"),
            tag: Some(tag & TAG_MAX),
            kind,
        }
    }
}

impl fmt::Display for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.tag {
            None => write!(f, "{}-{}", self.time.format(TIME_FORMAT), self.kind),
            Some(tag) => write!(
                f,
                "{}-{tag:06x}-{}",
                self.time.format(TIME_FORMAT_MS),
                self.kind
            ),
        }
    }
}

impl FromStr for BackupId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!(
                "{s:?} is not a backup id (expected YYYYMMDDTHHMMSS.mmmZ-<tag>-logical or -physical, as `pgctl list` shows)"
            )
        };
        let mut parts = s.split('-');
        let time = parts.next().ok_or_else(bad)?;
        let (tag, kind) = match (parts.next(), parts.next(), parts.next()) {
            (Some(kind), None, None) => (None, kind),
            (Some(tag), Some(kind), None) => {
                let ok = tag.len() == 6
                    && tag
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
                if !ok {
                    return Err(bad());
                }
                (Some(u32::from_str_radix(tag, 16).map_err(|_| bad())?), kind)
            }
            _ => return Err(bad()),
        };
        let kind = match kind {
            "logical" => Kind::Logical,
            "physical" => Kind::Physical,
            _ => return Err(bad()),
        };
        // chrono's `%.3f` also accepts no fraction: the length pins the form.
        let (format, len) = if tag.is_some() {
            (TIME_FORMAT_MS, 20)
        } else {
            (TIME_FORMAT, 16)
        };
        if time.len() != len {
            return Err(bad());
        }
        let time = NaiveDateTime::parse_from_str(time, format)
            .map_err(|_| bad())?
            .and_utc();
        Ok(BackupId { time, tag, kind })
    }
}

impl Serialize for BackupId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for BackupId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Joins key segments, skipping empty ones (an unset `S3_PREFIX`).
pub fn join(parts: &[&str]) -> String {
    parts
        .iter()
        .map(|p| p.trim_matches('/'))
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("/")
}

/// The folder of one target: `[S3_PREFIX/]<target prefix>`.
pub fn target_dir(s3_prefix: &str, target_prefix: &str) -> String {
    join(&[s3_prefix, target_prefix])
}

pub fn backup_dir(s3_prefix: &str, target_prefix: &str, id: &BackupId) -> String {
    join(&[s3_prefix, target_prefix, &id.to_string()])
}

/// A database name made safe for a file name and a `SHA256SUMS` line: anything outside
/// `[A-Za-z0-9._-]` becomes `%XX` (names are rarely unusual; when they are, nothing breaks).
pub fn safe_name(db: &str) -> String {
    let mut out = String::with_capacity(db.len());
    for b in db.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && !out.is_empty()) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The object of one database. It never collides with another database's (the escaping is
/// one-to-one) nor with the roles object: a database named `globals` (any case, for
/// case-insensitive file systems) has its first letter escaped, `%67lobals.sql.zst`.
pub fn database_object(db: &str, format: Format, compression: Compression) -> String {
    let ext = match format {
        Format::Custom => "dump",
        Format::Plain => "sql",
        Format::Tar => "tar",
    };
    let mut safe = safe_name(db);
    if safe.eq_ignore_ascii_case(GLOBALS_STEM) {
        safe = format!("%{:02X}{}", safe.as_bytes()[0], &safe[1..]);
    }
    format!("{safe}.{ext}{}", compression.extension())
}

const GLOBALS_STEM: &str = "globals";

/// The physical base backup: `base.tar.zst`.
pub fn base_object(compression: Compression) -> String {
    format!("base.tar{}", compression.extension())
}

pub fn globals_object(compression: Compression) -> String {
    format!("{GLOBALS_STEM}.sql{}", compression.extension())
}

/// `sha256sum -c` compatible lines: `<hex>  <name>`.
pub fn sums_file(entries: &[(String, String)]) -> String {
    entries
        .iter()
        .map(|(name, sha)| format!("{sha}  {name}\n"))
        .collect()
}

/// Splits `…/<target prefix>/<backup-id>/<name>` into (target dir, id, name).
pub fn parse_key(key: &str) -> Option<(&str, BackupId, &str)> {
    let (rest, name) = key.rsplit_once('/')?;
    let (dir, id) = rest.rsplit_once('/')?;
    Some((dir, id.parse().ok()?, name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[test]
    fn unique_ids_round_trip_sort_and_differ() {
        let t = DateTime::parse_from_rfc3339("2026-11-20T23:58:49.123456Z")
            .unwrap()
            .with_timezone(&Utc);
        let id = BackupId::tagged(t, Kind::Logical, 0x0a1b2c);
        assert_eq!(id.to_string(), "20261120T235849.123Z-0a1b2c-logical");
        assert_eq!(id.to_string().parse::<BackupId>().unwrap(), id);
        let later = BackupId::tagged(t + chrono::Duration::milliseconds(1), Kind::Logical, 0);
        assert!(id.to_string() < later.to_string() && id < later);
        // Two writers in the same millisecond: different folders.
        let ids: std::collections::BTreeSet<String> = (0..50)
            .map(|_| BackupId::unique(t, Kind::Physical).to_string())
            .collect();
        assert!(ids.len() >= 49, "{ids:?}");
        for bad in [
            "20261120T235849.123Z-0A1B2C-logical",
            "20261120T235849.123Z-0a1b2-logical",
            "20261120T235849Z-0a1b2c-logical",
            "20261120T235849.123Z-logical",
            "20261120T235849.123Z-0a1b2c-logical-x",
        ] {
            assert!(bad.parse::<BackupId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn backup_ids_round_trip_and_sort() {
        let t = DateTime::parse_from_rfc3339("2026-11-20T23:58:49.123Z")
            .unwrap()
            .with_timezone(&Utc);
        let id = BackupId::new(t, Kind::Logical);
        assert_eq!(id.to_string(), "20261120T235849Z-logical");
        assert_eq!("20261120T235849Z-logical".parse::<BackupId>().unwrap(), id);
        let later = BackupId::new(t + chrono::Duration::seconds(1), Kind::Physical);
        assert!(id.to_string() < later.to_string() && id < later);
        for bad in [
            "20261120T235849Z",
            "2026-11-20-logical",
            "20261120T235849Z-full",
            "",
        ] {
            assert!(bad.parse::<BackupId>().is_err(), "{bad}");
        }
    }

    #[rstest]
    #[case("", "shop/db", "shop/db")]
    #[case("prod/", "/shop/db/", "prod/shop/db")]
    fn target_dirs(#[case] prefix: &str, #[case] target: &str, #[case] expected: &str) {
        assert_eq!(target_dir(prefix, target), expected);
    }

    #[rstest]
    #[case("app", Format::Custom, Compression::Zstd(3), "app.dump.zst")]
    #[case("app", Format::Plain, Compression::Gzip(6), "app.sql.gz")]
    #[case("app", Format::Custom, Compression::None, "app.dump")]
    #[case("my db", Format::Custom, Compression::Zstd(3), "my%20db.dump.zst")]
    #[case(".hidden", Format::Custom, Compression::Zstd(3), "%2Ehidden.dump.zst")]
    #[case("ünï", Format::Custom, Compression::None, "%C3%BCn%C3%AF.dump")]
    #[case("globals", Format::Plain, Compression::Zstd(3), "%67lobals.sql.zst")]
    #[case("Globals", Format::Custom, Compression::Zstd(3), "%47lobals.dump.zst")]
    #[case("globals2", Format::Plain, Compression::Zstd(3), "globals2.sql.zst")]
    #[case("a/b \"c\"", Format::Plain, Compression::None, "a%2Fb%20%22c%22.sql")]
    fn object_names(
        #[case] db: &str,
        #[case] f: Format,
        #[case] c: Compression,
        #[case] expected: &str,
    ) {
        assert_eq!(database_object(db, f, c), expected);
    }

    /// Whatever the database names, no two objects of one backup share a name.
    #[test]
    fn object_names_never_collide() {
        let long = "é".repeat(31) + "x"; // 63 bytes, the longest name Postgres allows
        let names = [
            "globals",
            "Globals",
            "GLOBALS",
            "%67lobals",
            "globals.sql",
            "a b",
            "a%20b",
            "a/b",
            "a%2Fb",
            ".x",
            "%2Ex",
            "manifest.json",
            "SHA256SUMS",
            "base",
            "\"q\"",
            "שלום",
            "🎉",
            long.as_str(),
        ];
        for format in [Format::Custom, Format::Plain] {
            let c = Compression::Zstd(3);
            let mut seen = std::collections::BTreeSet::from([
                globals_object(c),
                MANIFEST.to_string(),
                SUMS.to_string(),
            ]);
            for n in names {
                let o = database_object(n, format, c);
                assert!(seen.insert(o.clone()), "{n:?} → {o} collides");
                assert!(!o.contains('/') && !o.contains(' ') && o.len() < 255, "{o}");
            }
        }
    }

    #[test]
    fn keys_parse_back() {
        let (dir, id, name) =
            parse_key("prod/shop/db/20261120T235849Z-logical/app.dump.zst").unwrap();
        assert_eq!(dir, "prod/shop/db");
        assert_eq!(id.to_string(), "20261120T235849Z-logical");
        assert_eq!(name, "app.dump.zst");
        assert!(parse_key("shop/db/not-an-id/x").is_none());
        assert_eq!(
            sums_file(&[("a.dump.zst".into(), "ab".into())]),
            "ab  a.dump.zst\n"
        );
    }
}
