//! `manifest.json`, the commit marker of a backup, written last (README "Storage layout"). Pure.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::layout::{BackupId, Kind};
use crate::model::{Format, Method};

pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectKind {
    Database,
    Globals,
    /// A physical base backup: the data directory as tar, WAL and `backup_manifest` inside.
    Base,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Object {
    /// File name inside the backup folder.
    pub name: String,
    pub kind: ObjectKind,
    /// The database it holds (`None` for globals).
    pub database: Option<String>,
    /// Bytes stored (compressed).
    pub size: u64,
    /// Bytes pg_dump produced, before compression.
    pub raw_size: u64,
    /// SHA-256 of the stored bytes, as in `SHA256SUMS`.
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Postgres {
    pub server_version: String,
    pub major: u32,
    /// pg_dump's own version line.
    pub dump_tool: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tool {
    pub name: String,
    pub version: String,
}

impl Default for Tool {
    fn default() -> Self {
        Tool {
            name: "pgbackup".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub backup_id: BackupId,
    pub kind: Kind,
    pub target: String,
    /// Key of the backup folder, from the bucket root.
    pub prefix: String,
    pub container: String,
    pub method: Method,
    pub format: Format,
    /// `zstd:3`, `gzip:6` or `none`.
    pub compression: String,
    pub postgres: Postgres,
    pub databases: Vec<String>,
    pub objects: Vec<Object>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub tool: Tool,
    /// Physical backups only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub physical: Option<Physical>,
    /// Row counts taken in the dump's own snapshot, for restore drills (logical backups whose
    /// dump options leave no table or row out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facts: Option<super::facts::Facts>,
    /// Set when every object is encrypted (age): to whom. `SHA256SUMS` and this file are not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<super::encryption::Encryption>,
}

/// What a physical restore must match and know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Physical {
    /// `pg_control_system().system_identifier`: which cluster this is.
    pub system_identifier: String,
    /// The server's `data_directory` (where the tar unpacks to).
    pub data_directory: String,
    /// `fetch`: the WAL needed for consistency is inside the tar.
    pub wal_method: String,
    /// The image the target ran when it was backed up.
    pub image: String,
}

impl Manifest {
    /// A logical backup of `target` in `dir` holding one database `app`, for tests.
    #[cfg(test)]
    pub(crate) fn sample(target: &str, dir: &str, id: BackupId) -> Manifest {
        let at = id.time;
        Manifest {
            format_version: FORMAT_VERSION,
            backup_id: id,
            kind: id.kind,
            target: target.into(),
            prefix: format!("{dir}/{id}"),
            container: "c".into(),
            method: Method::Exec,
            format: Format::Custom,
            compression: "zstd:3".into(),
            postgres: Postgres {
                server_version: "17.2".into(),
                major: 17,
                dump_tool: "pg_dump (PostgreSQL) 17.2".into(),
            },
            databases: vec!["app".into()],
            objects: vec![Object {
                name: "app.dump.zst".into(),
                kind: ObjectKind::Database,
                database: Some("app".into()),
                size: 3,
                raw_size: 3,
                sha256: "00".repeat(32),
            }],
            started_at: at,
            finished_at: at,
            tool: Tool::default(),
            physical: None,
            facts: None,
            encryption: None,
        }
    }
}

impl Manifest {
    /// Total stored bytes.
    pub fn size(&self) -> u64 {
        self.objects.iter().map(|o| o.size).sum()
    }

    pub fn raw_size(&self) -> u64 {
        self.objects.iter().map(|o| o.raw_size).sum()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("manifest serialises")
    }

    pub fn from_json(s: &[u8]) -> Result<Manifest, String> {
        let m: Manifest =
            serde_json::from_slice(s).map_err(|e| format!("manifest.json is not valid: {e}"))?;
        if m.format_version > FORMAT_VERSION {
            return Err(format!(
                "manifest.json has format version {} but this pgctl reads up to {FORMAT_VERSION}: upgrade pgbackup",
                m.format_version
            ));
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_sizes() {
        let t = Utc::now();
        let m = Manifest {
            format_version: FORMAT_VERSION,
            backup_id: BackupId::new(t, Kind::Logical),
            kind: Kind::Logical,
            target: "shop/db".into(),
            prefix: "shop/db/x".into(),
            container: "shop-db-1".into(),
            method: Method::Exec,
            format: Format::Custom,
            compression: "zstd:3".into(),
            postgres: Postgres {
                server_version: "17.2".into(),
                major: 17,
                dump_tool: "pg_dump (PostgreSQL) 17.2".into(),
            },
            databases: vec!["app".into()],
            objects: vec![
                Object {
                    name: "globals.sql.zst".into(),
                    kind: ObjectKind::Globals,
                    database: None,
                    size: 10,
                    raw_size: 30,
                    sha256: "aa".into(),
                },
                Object {
                    name: "app.dump.zst".into(),
                    kind: ObjectKind::Database,
                    database: Some("app".into()),
                    size: 100,
                    raw_size: 300,
                    sha256: "bb".into(),
                },
            ],
            started_at: t,
            finished_at: t,
            tool: Tool::default(),
            physical: None,
            facts: None,
            encryption: None,
        };
        let back = Manifest::from_json(m.to_json().as_bytes()).unwrap();
        assert_eq!(back, m);
        assert_eq!(m.size(), 110);
        assert_eq!(m.raw_size(), 330);
        let mut future = serde_json::to_value(&m).unwrap();
        future["format_version"] = 99.into();
        let err = Manifest::from_json(future.to_string().as_bytes()).unwrap_err();
        assert!(err.contains("upgrade pgbackup"), "{err}");
    }
}
