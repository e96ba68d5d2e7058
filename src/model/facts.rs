//! Facts a backup records about what it holds, and what a restore drill checks against them
//! (README "Restore drills"). Pure: the SQL text, reading its rows, comparing.
//!
//! A logical backup counts every table's rows and the large objects of each database in the
//! dump's own snapshot (`pg_export_snapshot()` in a session held open while `pg_dump
//! --snapshot` runs), so the counts are exactly what the dump holds, however busy the server.
//! A drill restores the backup elsewhere and counts again: any difference is a backup that
//! does not give back what it took.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// How the counts were taken: in the dump's own snapshot, so they are exact.
pub const IN_SNAPSHOT: &str = "snapshot";

/// What one database held when it was dumped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbFacts {
    /// Rows per table (`schema.table`, quoted where SQL needs it), ordinary tables and leaf
    /// partitions outside the system schemas, extension members left out (their extension
    /// creates them).
    pub tables: BTreeMap<String, u64>,
    pub large_objects: u64,
}

/// Every database's facts, and how they were taken.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Facts {
    /// [`IN_SNAPSHOT`].
    pub method: String,
    pub databases: BTreeMap<String, DbFacts>,
}

/// The rows [`read`] reads: `t|<table>|<rows>` per table, then `lo|<count>`. One statement,
/// so that it runs inside a transaction psql keeps open (`query_to_xml` counts each table
/// without a second round trip). `ONLY`: a parent of inherited tables counts its own rows.
/// A newline in a name is written `\n`, so every row is one line.
pub const COUNT_SQL: &str = "SELECT 't|' || replace(format('%I.%I', n.nspname, c.relname), E'\\n', '\\n') || '|' \
|| (xpath('/row/n/text()', query_to_xml(format('SELECT count(*) AS n FROM ONLY %I.%I', n.nspname, c.relname), false, true, '')))[1]::text \
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
WHERE c.relkind = 'r' AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_' \
AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e') \
UNION ALL SELECT 'lo|' || count(*) FROM pg_largeobject_metadata";

/// Reads the rows of [`COUNT_SQL`].
pub fn read(rows: &[String]) -> Result<DbFacts, String> {
    let mut f = DbFacts::default();
    let mut saw_lo = false;
    for row in rows {
        let bad = || format!("unexpected row {row:?} while counting rows");
        if let Some(n) = row.strip_prefix("lo|") {
            f.large_objects = n.trim().parse().map_err(|_| bad())?;
            saw_lo = true;
        } else if let Some(rest) = row.strip_prefix("t|") {
            let (table, n) = rest.rsplit_once('|').ok_or_else(bad)?;
            f.tables
                .insert(table.to_string(), n.trim().parse().map_err(|_| bad())?);
        } else {
            return Err(bad());
        }
    }
    if !saw_lo {
        return Err("the row count ended early (no large object count)".into());
    }
    Ok(f)
}

/// One way a restored database differs from what was recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    MissingDatabase(String),
    MissingTable {
        database: String,
        table: String,
        expected: u64,
    },
    ExtraTable {
        database: String,
        table: String,
        rows: u64,
    },
    Rows {
        database: String,
        table: String,
        expected: u64,
        restored: u64,
    },
    LargeObjects {
        database: String,
        expected: u64,
        restored: u64,
    },
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Difference::MissingDatabase(d) => write!(f, "database {d:?} was not restored"),
            Difference::MissingTable {
                database,
                table,
                expected,
            } => write!(
                f,
                "database {database:?}: table {table} is missing (recorded with {expected} rows)"
            ),
            Difference::ExtraTable {
                database,
                table,
                rows,
            } => write!(
                f,
                "database {database:?}: table {table} ({rows} rows) was not in the backup's facts"
            ),
            Difference::Rows {
                database,
                table,
                expected,
                restored,
            } => write!(
                f,
                "database {database:?}: table {table} has {restored} rows restored, {expected} recorded"
            ),
            Difference::LargeObjects {
                database,
                expected,
                restored,
            } => write!(
                f,
                "database {database:?}: {restored} large objects restored, {expected} recorded"
            ),
        }
    }
}

/// Every difference between what was recorded and what a restore gave back, database by
/// database in name order. Pure.
pub fn compare(
    recorded: &BTreeMap<String, DbFacts>,
    restored: &BTreeMap<String, DbFacts>,
) -> Vec<Difference> {
    let mut out = Vec::new();
    for (db, want) in recorded {
        let Some(got) = restored.get(db) else {
            out.push(Difference::MissingDatabase(db.clone()));
            continue;
        };
        for (table, &expected) in &want.tables {
            match got.tables.get(table) {
                None => out.push(Difference::MissingTable {
                    database: db.clone(),
                    table: table.clone(),
                    expected,
                }),
                Some(&restored) if restored != expected => out.push(Difference::Rows {
                    database: db.clone(),
                    table: table.clone(),
                    expected,
                    restored,
                }),
                Some(_) => {}
            }
        }
        for (table, &rows) in &got.tables {
            if !want.tables.contains_key(table) {
                out.push(Difference::ExtraTable {
                    database: db.clone(),
                    table: table.clone(),
                    rows,
                });
            }
        }
        if want.large_objects != got.large_objects {
            out.push(Difference::LargeObjects {
                database: db.clone(),
                expected: want.large_objects,
                restored: got.large_objects,
            });
        }
    }
    out
}

/// pg_dump options that leave tables or their rows out of a dump: with any of them the counts
/// of the whole database would not match a restore, so no facts are recorded.
pub fn options_select_data(dump_options: &[String]) -> Option<&str> {
    const SELECTING: [&str; 20] = [
        "-n",
        "-N",
        "-t",
        "-T",
        "-s",
        "-a",
        "--schema",
        "--exclude-schema",
        "--table",
        "--exclude-table",
        "--exclude-table-data",
        "--table-and-children",
        "--exclude-table-and-children",
        "--exclude-table-data-and-children",
        "--schema-only",
        "--data-only",
        "--no-unlogged-table-data",
        "--extension",
        "--exclude-extension",
        "--no-data",
    ];
    dump_options.iter().map(String::as_str).find(|o| {
        SELECTING.iter().any(|s| {
            *o == *s
                || o.strip_prefix(s)
                    .is_some_and(|rest| rest.starts_with('=') || (s.len() == 2 && !rest.is_empty()))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn rows(r: &[&str]) -> Vec<String> {
        r.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn reads_the_count_rows() {
        let f = read(&rows(&[
            "t|public.orders|1200",
            "t|\"Odd|name\".\"a\\nb\"|0",
            "lo|3",
        ]))
        .unwrap();
        assert_eq!(f.tables["public.orders"], 1200);
        assert_eq!(f.tables["\"Odd|name\".\"a\\nb\""], 0);
        assert_eq!(f.large_objects, 3);
        assert!(read(&rows(&["t|public.orders|12"])).is_err(), "cut short");
        assert!(read(&rows(&["hello", "lo|1"])).is_err());
        assert!(read(&rows(&["t|x|many", "lo|1"])).is_err());
    }

    fn facts(tables: &[(&str, u64)], lo: u64) -> DbFacts {
        DbFacts {
            tables: tables.iter().map(|(t, n)| (t.to_string(), *n)).collect(),
            large_objects: lo,
        }
    }

    #[test]
    fn compares_database_by_database() {
        let recorded = BTreeMap::from([
            (
                "shop".to_string(),
                facts(&[("public.orders", 10), ("public.items", 5)], 2),
            ),
            ("crm".to_string(), facts(&[], 0)),
        ]);
        assert!(compare(&recorded, &recorded).is_empty());
        let restored = BTreeMap::from([(
            "shop".to_string(),
            facts(&[("public.orders", 9), ("public.extra", 1)], 1),
        )]);
        let d: Vec<String> = compare(&recorded, &restored)
            .iter()
            .map(|d| d.to_string())
            .collect();
        assert_eq!(
            d,
            [
                "database \"crm\" was not restored",
                "database \"shop\": table public.items is missing (recorded with 5 rows)",
                "database \"shop\": table public.orders has 9 rows restored, 10 recorded",
                "database \"shop\": table public.extra (1 rows) was not in the backup's facts",
                "database \"shop\": 1 large objects restored, 2 recorded",
            ]
        );
    }

    #[rstest]
    #[case(&["--no-owner"], None)]
    #[case(&["-n", "public"], Some("-n"))]
    #[case(&["-npublic"], Some("-npublic"))]
    #[case(&["--exclude-table-data=audit.*"], Some("--exclude-table-data=audit.*"))]
    #[case(&["--exclude-table-data", "audit.*"], Some("--exclude-table-data"))]
    #[case(&["--no-comments", "--schema-only"], Some("--schema-only"))]
    #[case(&["--no-tablespaces", "--no-table-access-method"], None)]
    fn selecting_options(#[case] opts: &[&str], #[case] found: Option<&str>) {
        let opts: Vec<String> = opts.iter().map(|s| s.to_string()).collect();
        assert_eq!(options_select_data(&opts), found);
    }
}
