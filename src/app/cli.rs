//! The command line: every subcommand and flag, with the help text `pgctl --help` prints.

use clap::{Parser, Subcommand};

/// Backups and restores for Postgres running in Docker Compose.
///
/// Configuration comes from the environment (see the README); every variable also accepts
/// <NAME>_FILE. Exit codes: 0 ok, 1 operation failed, 2 usage or configuration error,
/// 3 Docker or the backup destination unreachable or refused at start-up, 4 refused before
/// changing anything (a restore over data without --clean, an incompatible Postgres version).
#[derive(Parser)]
#[command(name = "pgctl", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the controller: discover labelled Postgres containers and back them up on schedule.
    ///
    /// With --once (or PGBACKUP_SINGLE_SHOT=true): back up every valid target (or the named
    /// ones) now, logically (base backups with --physical; schedules are not consulted), apply
    /// retention, send notifications, and exit: 0 when every backup succeeded, 1 when any
    /// failed or a target's labels are invalid, 2 for an unknown target, 3 when Docker or the
    /// destination is unreachable. For host cron, Kubernetes CronJobs and CI.
    Run {
        /// Back up once and exit instead of running on schedule.
        #[arg(long)]
        once: bool,
        /// With --once: physical base backups instead of logical dumps.
        #[arg(long, requires = "once")]
        physical: bool,
        /// With --once: only these targets (`project/service`, or just the service).
        #[arg(value_name = "TARGET", requires = "once")]
        targets: Vec<String>,
    },
    /// Back up targets now, through the running controller (never overlapping a scheduled run).
    Backup {
        /// Targets (`project/service`, or just the service); see `pgctl status`.
        #[arg(
            value_name = "TARGET",
            required_unless_present = "all",
            conflicts_with = "all"
        )]
        targets: Vec<String>,
        /// Every valid target.
        #[arg(long)]
        all: bool,
        /// A physical base backup instead of logical dumps.
        #[arg(long)]
        physical: bool,
        /// Wait for a running backup of the same target instead of refusing.
        #[arg(long)]
        wait: bool,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
        /// Controller to ask (default: this container's PGBACKUP_HTTP_ADDR on localhost).
        #[arg(long, value_name = "URL")]
        controller: Option<String>,
    },
    /// Restore drill, through the running controller: restore each target's latest backup of
    /// each kind into a throwaway server from the target's own image (no network, memory and
    /// CPU limits). A logical backup is restored with the same code as `pgctl restore` and every
    /// table's row count and the large objects are compared with what the backup recorded in
    /// its own snapshot; a base backup is started as a cluster and checked for its identity and
    /// databases. The server is removed whatever happens; the source is never touched. Exit
    /// codes: 0 every drill passed, 1 a drill failed (the difference is printed) or no
    /// controller answered, 2 an unknown target.
    Drill {
        /// Targets (`project/service`, or just the service); see `pgctl status`.
        #[arg(
            value_name = "TARGET",
            required_unless_present = "all",
            conflicts_with = "all"
        )]
        targets: Vec<String>,
        /// Every valid target.
        #[arg(long)]
        all: bool,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
        /// Controller to ask (default: this container's PGBACKUP_HTTP_ADDR on localhost).
        #[arg(long, value_name = "URL")]
        controller: Option<String>,
    },
    /// List committed backups (newest last), read from the backup destination.
    List {
        /// Only this target (`project/service`, or just the service).
        target: Option<String>,
        /// Print JSON (the manifests) for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Restore a backup: logical into a running Postgres container, all or nothing; or
    /// physical (--physical) into a new volume the compose service is switched onto.
    ///
    /// BACKUP is `latest`, a backup id (see `pgctl list`) or a key (folder, manifest or one
    /// object). Every database is loaded into a new database and all of them take their names
    /// in one transaction, only after every object arrived with the right SHA-256 and every
    /// statement ran; on any failure the target is left as it was. A logical backup restores
    /// into its own major or a newer one: that is how to upgrade (README: Upgrading Postgres).
    /// With --physical the service keeps its old volume until the new one is unpacked,
    /// verified and started; any failure switches it back, and the old volume is kept.
    /// Exit codes: 0 restored, 1 failed and rolled back, 2 bad arguments, 4 refused (data would
    /// be overwritten without --clean, the target's Postgres cannot read the backup, not enough
    /// space, compose file not reachable).
    Restore {
        /// `latest`, a backup id or a key.
        #[arg(value_name = "BACKUP", required_unless_present_any = ["resume", "rollback"])]
        backup: Option<String>,
        /// Finish a physical restore whose switch was cut off (the sidecar killed half-way):
        /// the service (`project/service` or the service) `pgctl status` names.
        #[arg(long, value_name = "SERVICE", conflicts_with_all = ["backup", "rollback"])]
        resume: Option<String>,
        /// Undo a physical restore whose switch was cut off: the service goes back to its old
        /// volume and container, the compose file to what it was.
        #[arg(long, value_name = "SERVICE", conflicts_with_all = ["backup", "resume"])]
        rollback: Option<String>,
        /// Whose backups `latest` or a bare id refer to (default: the --to target).
        #[arg(long, value_name = "TARGET")]
        from: Option<String>,
        /// Container to restore into: `project/service`, service or container name (default:
        /// the backup's own target).
        #[arg(long, value_name = "TARGET")]
        to: Option<String>,
        /// Restore into the server this URL names instead (postgres://USER@HOST[:PORT][/DB]
        /// [?sslmode=verify-full&sslrootcert=FILE]), through the sidecar's client programs. The
        /// password comes from PGPASSWORD, never the URL (process lists show arguments); a
        /// database in the path restores that database of the backup, as --db does.
        #[arg(long, value_name = "URL", conflicts_with_all = ["to", "physical"])]
        to_url: Option<String>,
        /// Restore only this database of the backup.
        #[arg(long, value_name = "NAME")]
        db: Option<String>,
        /// Replace databases that hold data: each is replaced as a whole by the backup's, all
        /// in one transaction at the end (the replaced ones are dropped after it).
        #[arg(long)]
        clean: bool,
        /// Restore a physical base backup: new volume, service recreated on it, compose file
        /// rewritten (the old volume is kept).
        #[arg(long)]
        physical: bool,
        /// With --physical: overwrite the service's current volume instead (needs --yes).
        #[arg(long)]
        in_place: bool,
        /// Confirms --in-place.
        #[arg(long)]
        yes: bool,
        /// With --physical: start the restored server as a standby (standby.signal).
        #[arg(long)]
        standby: bool,
        /// With --physical: replace postgresql.auto.conf with this file.
        #[arg(long, value_name = "FILE")]
        auto_conf: Option<std::path::PathBuf>,
        /// Run the *.sql files of this directory (as the sidecar sees it), in name order, with
        /// psql in the target's POSTGRES_DB once the restored databases answer under their
        /// names; any failure undoes the restore (logical: the old databases take their names
        /// back; --physical: the service goes back to its old volume).
        #[arg(long, value_name = "DIR")]
        post_sql: Option<std::path::PathBuf>,
        /// A pg_restore option for a logical restore of a custom-format backup, added to the
        /// target's pgbackup.restore_options label; repeat it for several: --no-owner,
        /// --no-privileges, --no-comments, --no-publications, --no-subscriptions,
        /// --no-security-labels, --no-tablespaces, --no-table-access-method,
        /// --exclude-schema=NAME, --use-set-session-authorization.
        #[arg(
            long = "restore-option",
            value_name = "OPTION",
            allow_hyphen_values = true
        )]
        restore_options: Vec<String>,
        /// Print what would happen and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// An age identity file that decrypts encrypted backups (AGE-SECRET-KEY-1… lines, or an
        /// unencrypted SSH private key); `-` reads it from standard input. Repeat for several.
        /// Default: PGBACKUP_AGE_IDENTITY_FILE.
        #[arg(long = "identity", value_name = "FILE")]
        identity: Vec<String>,
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Apply retention: delete backups the policy does not keep, uncommitted leftovers older
    /// than a day, and stale uploads (S3 multipart uploads, temporary files in a directory). Prints the plan with every backup's reasons.
    Prune {
        /// Targets (`project/service`); default: every valid target the controller sees.
        #[arg(value_name = "TARGET")]
        targets: Vec<String>,
        /// Print the plan only.
        #[arg(long)]
        dry_run: bool,
        /// Print the plan as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Re-read stored objects and check their sizes and SHA-256 against the manifest (and,
    /// with an identity, decrypt encrypted ones). Exit 1 when any backup is damaged.
    Verify {
        /// `latest`, a backup id or a key.
        #[arg(
            value_name = "BACKUP",
            required_unless_present = "all",
            conflicts_with = "all"
        )]
        backup: Option<String>,
        /// Every committed backup in the bucket (under S3_PREFIX).
        #[arg(long)]
        all: bool,
        /// Whose backups `latest` or a bare id refer to.
        #[arg(long, value_name = "TARGET")]
        from: Option<String>,
        /// Also decrypt encrypted backups with this age identity file (`-`: standard input),
        /// which authenticates every chunk of their content; without one, only the stored
        /// bytes are checked. Default: PGBACKUP_AGE_IDENTITY_FILE.
        #[arg(long = "identity", value_name = "FILE")]
        identity: Vec<String>,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Last resort for a Postgres service that will not start because its WAL is damaged or
    /// missing: pg_resetwal on its stopped data volume. Restoring a backup is the first
    /// choice: a reset loses the transactions whose WAL is gone and may leave data
    /// inconsistent (dump it and restore it into a fresh cluster afterwards).
    ///
    /// Refused while the server runs and answers. The data volume is first copied whole to a
    /// new volume (VOLUME-before-resetwal-TIME, kept: the way back); `pg_resetwal --dry-run`
    /// is shown; then `pg_resetwal -f` runs from the service's own image, the service starts
    /// and what the server says is printed. If it still cannot start, the volume is put back
    /// from the copy. Exit codes: 0 rescued, 1 failed (the volume put back), 2 bad arguments,
    /// 4 refused (the server is running; nothing was changed).
    Rescue {
        /// The service: `project/service`, service or container name (running or stopped).
        #[arg(value_name = "SERVICE")]
        service: String,
        /// Reset the write-ahead log (pg_resetwal); the only rescue there is.
        #[arg(long)]
        reset_wal: bool,
        /// Confirms that recent transactions may be lost.
        #[arg(long)]
        yes: bool,
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show every discovered target with its parsed settings or its label errors.
    Status {
        /// Print JSON for scripts instead of a table.
        #[arg(long)]
        json: bool,
        /// Controller to ask (default: this container's PGBACKUP_HTTP_ADDR on localhost).
        #[arg(long, value_name = "URL")]
        controller: Option<String>,
    },
}
