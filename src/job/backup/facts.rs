//! A database's facts ([`crate::model::facts`]) taken in its dump's own snapshot: a psql session
//! opens a repeatable-read transaction, exports its snapshot for `pg_dump --snapshot`, counts
//! every table's rows in it, and stays open until pg_dump has finished (pg_dump can import the
//! snapshot only while the exporting transaction lives). The counts are then exactly what the
//! dump holds, whatever was written meanwhile.

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use super::*;
use crate::engine::docker::ExecExit;
use crate::engine::pg::{PgInput, PgStream};
use crate::model::facts::{self, DbFacts};

const SNAPSHOT_MARK: &str = "pgbackup:snapshot:";
const COUNTED_MARK: &str = "pgbackup:counted";

/// An open snapshot of one database and its row counts on their way.
pub(super) struct Snapshot {
    /// For `pg_dump --snapshot`.
    pub(super) id: String,
    input: PgInput,
    lines: mpsc::UnboundedReceiver<String>,
    /// Taken once psql's end was awaited.
    reader: Option<tokio::task::JoinHandle<Result<ExecExit, PgError>>>,
}

impl Snapshot {
    /// Exports a snapshot of `database` and starts counting its rows in it.
    pub(super) async fn open(access: &Access, database: &str) -> Result<Snapshot, PgError> {
        let (out, mut input) = access.session(database).await?;
        let (tx, lines) = mpsc::unbounded_channel();
        let reader = Some(tokio::spawn(read_lines(out, tx)));
        // Row security off, as pg_dump sets it: a count that a policy would filter fails
        // instead of recording fewer rows (pg_dump fails on such a table too).
        let script = format!(
            "SET row_security = off;\nBEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;\n\
             SELECT '{SNAPSHOT_MARK}' || pg_export_snapshot();\n{};\n\\echo {COUNTED_MARK}\n",
            facts::COUNT_SQL
        );
        let mut s = Snapshot {
            id: String::new(),
            input: Box::pin(tokio::io::sink()),
            lines,
            reader,
        };
        let io = |e: std::io::Error| PgError::Other(format!("counting rows in {database:?}: {e}"));
        input.write_all(script.as_bytes()).await.map_err(io)?;
        input.flush().await.map_err(io)?;
        s.input = input;
        let first = tokio::time::timeout(std::time::Duration::from_secs(60), s.lines.recv()).await;
        match first {
            Ok(Some(line)) if line.starts_with(SNAPSHOT_MARK) => {
                s.id = line[SNAPSHOT_MARK.len()..].trim().to_string();
                Ok(s)
            }
            other => {
                let why = match other {
                    Err(_) => "no snapshot within 60 s".to_string(),
                    Ok(Some(line)) => format!("unexpected output {line:?}"),
                    Ok(None) => s.ended().await,
                };
                s.abandon().await;
                Err(PgError::Other(format!(
                    "cannot export a snapshot of {database:?}: {why}"
                )))
            }
        }
    }

    /// Waits for the counts (pg_dump has finished with the snapshot) and ends the session.
    pub(super) async fn finish(mut self) -> Result<DbFacts, PgError> {
        let mut rows = Vec::new();
        let mut counted = false;
        while let Some(line) = self.lines.recv().await {
            if line == COUNTED_MARK {
                counted = true;
                break;
            }
            if !line.is_empty() {
                rows.push(line);
            }
        }
        if !counted {
            let why = self.ended().await;
            self.abandon().await;
            return Err(PgError::Other(format!("counting rows failed: {why}")));
        }
        let _ = self.input.write_all(b"COMMIT;\n").await;
        self.abandon().await;
        facts::read(&rows).map_err(PgError::Other)
    }

    /// Ends the session (its transaction ends with it).
    pub(super) async fn abandon(mut self) {
        let _ = self.input.shutdown().await;
        drop(self.input);
        if let Some(r) = self.reader {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(30), r).await;
        }
    }

    /// How the session ended, once its output has: psql's exit code and stderr.
    async fn ended(&mut self) -> String {
        let _ = self.input.shutdown().await;
        let Some(reader) = self.reader.take() else {
            return "psql ended".into();
        };
        match tokio::time::timeout(std::time::Duration::from_secs(30), reader).await {
            Ok(Ok(Ok(exit))) => format!("psql exited with code {}: {}", exit.code, exit.stderr),
            Ok(Ok(Err(e))) => e.to_string(),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "psql did not end".into(),
        }
    }
}

/// Passes the session's output on line by line; returns how psql ended.
async fn read_lines(out: PgStream, tx: mpsc::UnboundedSender<String>) -> Result<ExecExit, PgError> {
    let mut r = BufReader::new(out);
    let mut line = String::new();
    loop {
        line.clear();
        match r.read_line(&mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let _ = tx.send(line.trim_end_matches(['\n', '\r']).to_string());
            }
        }
    }
    drop(tx);
    r.into_inner().finish().await
}
