//! `pgctl restore`, `prune` and `verify`: commands that work on S3 and Docker directly (no
//! controller needed), with tables for people and JSON for scripts.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use indicatif::{ProgressBar, ProgressStyle};

use pgbackup::config::Config;
use pgbackup::discovery::Target;
use pgbackup::engine::docker::DockerClient;
use pgbackup::exit;
use pgbackup::model::encryption::Identities;
use pgbackup::model::layout;
use pgbackup::model::manifest::Manifest;
use pgbackup::pipeline::fetch;
use pgbackup::restore::physical;
use pgbackup::restore::{self, BackupRef, Progress, Quiet, Request, RestoreError};
use pgbackup::retention::prune::{self, Scope};
use pgbackup::table::human_bytes;

/// The configuration, or the exit code after saying what is wrong.
pub fn load_config() -> Result<Config, i32> {
    crate::env_map()
        .and_then(|m| Config::from_map(&m))
        .map_err(|e| {
            eprintln!("pgctl: configuration error: {e}");
            exit::USAGE
        })
}

async fn connect_docker(cfg: &Config) -> Result<DockerClient, i32> {
    DockerClient::connect_scoped(cfg.docker_host.as_deref(), &cfg.defaults.scope)
        .await
        .map_err(|e| {
            eprintln!("pgctl: {e}");
            exit::UNAVAILABLE
        })
}

async fn config_and_docker() -> Result<(Config, DockerClient), i32> {
    let cfg = load_config()?;
    let docker = connect_docker(&cfg).await?;
    Ok((cfg, docker))
}

/// A progress bar on stderr when it is a terminal: bytes, rate and time left.
struct Bar(ProgressBar);

impl Bar {
    fn new() -> Bar {
        let pb = if std::io::stderr().is_terminal() {
            ProgressBar::new(0)
        } else {
            ProgressBar::hidden()
        };
        pb.set_style(
            ProgressStyle::with_template(
                "{msg:>12} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {eta} left",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        Bar(pb)
    }
}

impl Progress for Bar {
    fn start(&self, what: &str, total: u64) {
        self.0.reset();
        self.0.set_length(total);
        self.0.set_position(0);
        self.0.set_message(what.to_string());
        self.0.enable_steady_tick(Duration::from_millis(250));
    }
    fn set(&self, done: u64) {
        self.0.set_position(done);
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

pub struct RestoreArgs {
    pub backup: String,
    pub from: Option<String>,
    pub to: Option<String>,
    /// `--to-url`, as given.
    pub to_url: Option<String>,
    pub db: Option<String>,
    pub clean: bool,
    /// `Some` with --physical.
    pub physical: Option<physical::Options>,
    /// Options given that only apply to --physical.
    pub physical_only: Vec<&'static str>,
    /// `--post-sql` of a logical restore.
    pub post_sql: Option<std::path::PathBuf>,
    /// `--restore-option`s, as given.
    pub restore_options: Vec<String>,
    pub dry_run: bool,
    /// `--identity` files, as given.
    pub identity: Vec<String>,
}

/// `--to-url`: the server, its password from `PGPASSWORD` (a password in the URL is refused:
/// every process list shows pgctl's arguments). Errors never repeat the URL.
fn to_url(url: &str) -> Result<pgbackup::config::endpoint::Endpoint, String> {
    let mut e = pgbackup::config::endpoint::Endpoint::parse(url).map_err(|why| {
        format!(
            "--to-url is not valid: {why}; expected {}",
            pgbackup::config::endpoint::EXPECTED
        )
    })?;
    if e.password.is_some() {
        return Err(
            "--to-url holds a password, which every process list shows: leave it out and set PGPASSWORD (docker compose exec -e PGPASSWORD backup pgctl restore …), or declare the server as a target (PGBACKUP_TARGET_<NAME>_URL_FILE) and restore --to NAME; nothing was changed"
                .into(),
        );
    }
    e.password = std::env::var("PGPASSWORD")
        .ok()
        .filter(|p| !p.is_empty())
        .map(pgbackup::config::Secret::new);
    Ok(e)
}

/// What decrypts encrypted backups: the `--identity` files, else PGBACKUP_AGE_IDENTITY_FILE.
fn keys_for(cfg: &Config, files: &[String]) -> Result<Option<Arc<Identities>>, i32> {
    if files.is_empty() {
        return Ok(cfg.defaults.age_identity.clone());
    }
    let mut all = Vec::new();
    for f in files {
        all.push(pgbackup::pipeline::crypt::load_identities(f).map_err(|e| {
            eprintln!("pgctl: --identity: {e}");
            exit::USAGE
        })?);
    }
    Ok(Identities::merge(all).map(Arc::new))
}

/// `pgctl restore --resume|--rollback SERVICE`: finishes or undoes a physical restore's switch
/// that was cut off, from its journal.
pub async fn finish_switch(service: &str, resume: bool, json: bool) -> i32 {
    let (_cfg, docker) = match config_and_docker().await {
        Ok(v) => v,
        Err(code) => return code,
    };
    let result = async {
        let j = physical::find_journal(&docker, service).await?;
        if resume {
            physical::resume(&docker, j).await
        } else {
            physical::roll_back(&docker, j).await
        }
    }
    .await;
    report(result.map(Some), json, |said: &String| println!("{said}"))
}

pub async fn restore(args: RestoreArgs, json: bool) -> i32 {
    if args.physical.is_none() && !args.physical_only.is_empty() {
        eprintln!(
            "pgctl: {} only apply to a physical restore: add --physical",
            args.physical_only.join(", ")
        );
        return exit::USAGE;
    }
    if args.physical.is_some() && (args.db.is_some() || args.clean) {
        eprintln!(
            "pgctl: --db and --clean apply to logical restores; a physical restore replaces the whole cluster"
        );
        return exit::USAGE;
    }
    let backup: BackupRef = match args.backup.parse() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("pgctl: {e}");
            return exit::USAGE;
        }
    };
    let (cfg, docker) = match config_and_docker().await {
        Ok(v) => v,
        Err(code) => return code,
    };
    if let Err(e) = restore::check_bucket_of(&args.backup, &cfg.destination.location()) {
        eprintln!("pgctl: {e}");
        return exit::USAGE;
    }
    let keys = match keys_for(&cfg, &args.identity) {
        Ok(k) => k,
        Err(code) => return code,
    };
    let store = pgbackup::store::open(&cfg.destination).await;
    let defaults = cfg.defaults();
    let mut options = Vec::new();
    for o in &args.restore_options {
        match pgbackup::config::labels::validate_restore_options(o) {
            Ok(v) => options.extend(v),
            Err(why) => {
                eprintln!("pgctl: --restore-option {o:?} is not valid: expected {why}");
                return exit::USAGE;
            }
        }
    }
    if !options.is_empty() && args.physical.is_some() {
        eprintln!(
            "pgctl: --restore-option applies to logical restores (pg_restore); a --physical restore unpacks the data directory as it was"
        );
        return exit::USAGE;
    }
    let to_url = match args.to_url.as_deref().map(to_url).transpose() {
        Ok(u) => u,
        Err(e) => {
            eprintln!("pgctl: {e}");
            return exit::USAGE;
        }
    };
    let req = Request {
        backup,
        from: args.from,
        to: args.to,
        to_url,
        db: args.db,
        clean: args.clean,
        kind: if args.physical.is_some() {
            layout::Kind::Physical
        } else {
            layout::Kind::Logical
        },
        options,
        post_sql: args.post_sql,
        keys: keys.clone(),
    };
    if let Some(mut options) = args.physical {
        options.keys = keys;
        return restore_physical(
            &docker,
            store.as_ref(),
            &cfg,
            &req,
            options,
            args.dry_run,
            json,
        )
        .await;
    }
    let result = async {
        let (manifest, object) =
            restore::resolve_backup(&docker, store.as_ref(), &defaults, &req).await?;
        let plan = restore::plan(&docker, &defaults, manifest, object, &req).await?;
        if !json {
            eprint!("{plan}");
        }
        restore::check(&plan)?;
        if args.dry_run {
            let objects = restore::objects_of(&plan);
            restore::check_keys(
                store.as_ref(),
                &plan.manifest,
                &objects,
                plan.keys.as_deref(),
            )
            .await?;
            return Ok(None);
        }
        restore::execute(&docker, store.as_ref(), &plan, progress(json).as_ref())
            .await
            .map(Some)
    }
    .await;
    report(result, json, |o| {
        println!(
            "restored {} of {} into {}: {} ({}) in {:.1}s{}",
            o.backup_id,
            o.source,
            o.target,
            o.databases.join(", "),
            human_bytes(o.bytes),
            o.duration_seconds,
            if o.roles_created.is_empty() {
                String::new()
            } else {
                format!("; roles created: {}", o.roles_created.join(", "))
            }
        );
        for db in &o.left_over {
            eprintln!(
                "pgctl: warning: the database replaced by the restore is left as {db}: it could not be dropped (see the log); drop it by hand when no one uses it"
            );
        }
    })
}

/// A progress bar on a terminal, nothing for scripts.
fn progress(json: bool) -> Box<dyn Progress> {
    if json {
        Box::new(Quiet)
    } else {
        Box::new(Bar::new())
    }
}

/// Prints how a restore ended (`None`: a dry run) as JSON or through `human`; the exit code.
fn report<O: serde::Serialize>(
    result: Result<Option<O>, RestoreError>,
    json: bool,
    human: impl FnOnce(&O),
) -> i32 {
    match result {
        Ok(None) => {
            if !json {
                eprintln!("pgctl: dry run: nothing was changed");
            }
            exit::OK
        }
        Ok(Some(o)) if json => {
            println!("{}", serde_json::to_string_pretty(&o).expect("serialises"));
            exit::OK
        }
        Ok(Some(o)) => {
            human(&o);
            exit::OK
        }
        Err(e) => failed(e),
    }
}

fn failed(e: RestoreError) -> i32 {
    let label = match e {
        RestoreError::Refused(_) => "refused",
        RestoreError::Usage(_) => "error",
        RestoreError::Failed(_) => "restore failed",
    };
    eprintln!("pgctl: {label}: {e}");
    e.exit_code()
}

async fn restore_physical(
    docker: &DockerClient,
    store: &dyn pgbackup::store::Store,
    cfg: &Config,
    req: &Request,
    options: physical::Options,
    dry_run: bool,
    json: bool,
) -> i32 {
    let result = async {
        let (manifest, _) = restore::resolve_backup(docker, store, &cfg.defaults(), req).await?;
        let plan = physical::prepare(docker, manifest, req.to.as_deref(), options).await?;
        if !json {
            eprint!("{plan}");
        }
        if dry_run {
            let keys = plan.options.keys.as_deref();
            restore::check_keys(store, &plan.manifest, &[&plan.object], keys).await?;
            return Ok(None);
        }
        physical::execute(docker, store, &plan, progress(json).as_ref())
            .await
            .map(Some)
    }
    .await;
    report(result, json, |o| {
        println!(
            "restored {} of {} into {} (container {}) on volume {} in {:.1}s",
            o.backup_id, o.source, o.service, o.container, o.volume, o.duration_seconds
        );
        if let (Some(file), Some(bak)) = (&o.compose_file, &o.compose_backup) {
            println!("compose file {file} now uses it (previous version: {bak})");
        }
        if let Some(old) = &o.previous_volume {
            println!(
                "the previous volume {old} is kept: check the restored data, then remove it with `docker volume rm {old}`"
            );
        }
    })
}

/// Scopes for `prune`: the named targets, or every valid target running now.
async fn scopes(cfg: &Config, docker: &DockerClient, names: &[String]) -> Result<Vec<Scope>, i32> {
    let containers = docker.list_labelled().await.map_err(|e| {
        eprintln!("pgctl: {e}");
        exit::UNAVAILABLE
    })?;
    // Through the registry, so that targets sharing a folder are refused here too.
    let mut registry = pgbackup::discovery::Registry::default();
    registry.replace_all(&containers, &cfg.defaults());
    let running: Vec<Target> = registry.targets();
    if names.is_empty() {
        for t in running.iter().filter(|t| t.settings().is_none()) {
            eprintln!(
                "pgctl: warning: {} has invalid labels and is not pruned; see `pgctl status`",
                t.target
            );
        }
        return Ok(running
            .iter()
            .filter_map(|t| prune::scope_of(t, cfg.destination.prefix()))
            .collect());
    }
    let mut out = Vec::new();
    for name in names {
        let found: Vec<&Target> = running.iter().filter(|t| t.target.matches(name)).collect();
        match found.as_slice() {
            [t] => match prune::scope_of(t, cfg.destination.prefix()) {
                Some(s) => out.push(s),
                None => {
                    eprintln!(
                        "pgctl: {} has invalid labels (see `pgctl status`): fix them first, its retention labels are unknown",
                        t.target
                    );
                    return Err(exit::USAGE);
                }
            },
            [] if name.contains('/') => {
                // Not running (or never labelled here): its folder with the environment's policy.
                out.push(Scope {
                    target: name.clone(),
                    dir: layout::target_dir(cfg.destination.prefix(), name),
                    policy: cfg.defaults.keep.clone(),
                })
            }
            [] => {
                eprintln!(
                    "pgctl: no running target named {name:?}; name a target that is not running as project/service"
                );
                return Err(exit::USAGE);
            }
            _ => {
                eprintln!("pgctl: {name:?} is ambiguous: name it as project/service");
                return Err(exit::USAGE);
            }
        }
    }
    Ok(out)
}

pub async fn prune(targets: Vec<String>, dry_run: bool, json: bool) -> i32 {
    let (cfg, docker) = match config_and_docker().await {
        Ok(v) => v,
        Err(code) => return code,
    };
    let scopes = match scopes(&cfg, &docker, &targets).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    if scopes.is_empty() {
        eprintln!("pgctl: no targets to prune");
        return exit::OK;
    }
    let store = pgbackup::store::open(&cfg.destination).await;
    let now = Utc::now();
    let mut plans = Vec::new();
    let mut failed = false;
    for scope in &scopes {
        let plan = match prune::plan(
            store.as_ref(),
            scope,
            cfg.min_backups,
            cfg.defaults.timezone,
            now,
        )
        .await
        {
            Ok(p) => p,
            Err(e) => {
                eprintln!("pgctl: {}: {e}", scope.target);
                failed = true;
                continue;
            }
        };
        if !json {
            print!("{}", prune::render(&plan, cfg.defaults.timezone, now));
        }
        if !dry_run {
            match prune::execute(store.as_ref(), &plan).await {
                Ok(d) => {
                    if !json {
                        println!(
                            "  deleted {} backups and {} leftovers, aborted {} uploads",
                            d.backups_deleted, d.leftovers_deleted, d.uploads_aborted
                        );
                    }
                }
                Err(e) => {
                    eprintln!("pgctl: {}: {e}", scope.target);
                    failed = true;
                }
            }
        }
        plans.push(plan);
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&plans).expect("serialises")
        );
    } else if dry_run {
        println!("(dry run: nothing was deleted)");
    }
    if failed { exit::FAILED } else { exit::OK }
}

#[derive(serde::Serialize)]
struct Verified {
    backup_id: String,
    target: String,
    ok: bool,
    objects: usize,
    bytes: u64,
    damage: Vec<String>,
    /// Age-encrypted objects.
    encrypted: bool,
    /// Whether their content was decrypted (and so authenticated) as well.
    decrypted: bool,
    /// Why an encrypted backup's content was not decrypted.
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

pub async fn verify(
    backup: Option<String>,
    all: bool,
    from: Option<String>,
    identity: Vec<String>,
    json: bool,
) -> i32 {
    let cfg = match load_config() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let keys = match keys_for(&cfg, &identity) {
        Ok(k) => k,
        Err(code) => return code,
    };
    let store = pgbackup::store::open(&cfg.destination).await;
    let Chosen {
        manifests,
        unreadable,
        only,
    } = match chosen(&cfg, store.as_ref(), backup, all, from).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut results = Vec::new();
    // A manifest that cannot be read is a damaged backup: reported, counted, exit 1.
    let unreadable = unreadable.into_iter().map(|p| Verified {
        backup_id: String::new(),
        target: String::new(),
        ok: false,
        objects: 0,
        bytes: 0,
        damage: vec![p],
        encrypted: false,
        decrypted: false,
        note: None,
    });
    for v in unreadable {
        if !json {
            print_verified(&v);
        }
        results.push(v);
    }
    // Printed as each backup is read: `--all` over many backups shows progress.
    for m in &manifests {
        let v = verify_one(store.as_ref(), m, only.as_deref(), keys.as_deref()).await;
        if !json {
            print_verified(&v);
        }
        results.push(v);
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&results).expect("serialises")
        );
    } else if results.is_empty() {
        println!("(no committed backups)");
    }
    if results.iter().all(|v| v.ok) {
        exit::OK
    } else {
        exit::FAILED
    }
}

/// What `verify` reads: the backups named, manifests that could not be read, and with a key
/// naming one object, that object only.
struct Chosen {
    manifests: Vec<Manifest>,
    unreadable: Vec<String>,
    only: Option<String>,
}

async fn chosen(
    cfg: &Config,
    store: &dyn pgbackup::store::Store,
    backup: Option<String>,
    all: bool,
    from: Option<String>,
) -> Result<Chosen, i32> {
    if all {
        return match pgbackup::store::catalog::committed(store, None).await {
            Ok((manifests, unreadable)) => Ok(Chosen {
                manifests,
                unreadable,
                only: None,
            }),
            Err(e) => {
                eprintln!("pgctl: {e}");
                Err(exit::FAILED)
            }
        };
    }
    let reference = backup.unwrap_or_default();
    let backup: BackupRef = restore::check_bucket_of(&reference, &cfg.destination.location())
        .and_then(|()| reference.parse())
        .map_err(|e| {
            eprintln!("pgctl: {e}");
            exit::USAGE
        })?;
    let docker = connect_docker(cfg).await?;
    let req = Request {
        backup,
        from,
        to: None,
        to_url: None,
        db: None,
        clean: false,
        kind: pgbackup::model::layout::Kind::Logical,
        options: vec![],
        post_sql: None,
        keys: None,
    };
    let (m, object) = restore::resolve_backup(&docker, store, &cfg.defaults(), &req)
        .await
        .map_err(|e| {
            eprintln!("pgctl: {e}");
            e.exit_code()
        })?;
    if let Some(name) = &object
        && !m.objects.iter().any(|o| &o.name == name)
    {
        eprintln!(
            "pgctl: backup {} has no object {name:?}; it holds {}",
            m.backup_id,
            m.objects
                .iter()
                .map(|o| o.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        return Err(exit::USAGE);
    }
    Ok(Chosen {
        manifests: vec![m],
        unreadable: vec![],
        only: object,
    })
}

/// Re-reads one backup's objects (or only the one named) and its `SHA256SUMS`; decrypts
/// encrypted objects when `keys` are given.
async fn verify_one(
    store: &dyn pgbackup::store::Store,
    m: &Manifest,
    only: Option<&str>,
    keys: Option<&Identities>,
) -> Verified {
    let mut damage = Vec::new();
    if let Err(e) = fetch::verify_sums(store, m).await {
        damage.push(e);
    }
    let encrypted = m.encryption.is_some();
    let mut decrypted = encrypted && keys.is_some();
    let mut note = (encrypted && keys.is_none()).then(|| {
        "content not decrypted (no --identity): the stored bytes were checked".to_string()
    });
    for o in m
        .objects
        .iter()
        .filter(|o| only.is_none_or(|n| o.name == n))
    {
        match fetch::verify_object(store, m, o, keys).await {
            Ok(fetch::Verified::Decrypted) => {}
            Ok(fetch::Verified::Stored) => decrypted = false,
            // The stored bytes matched; the identity is not one of the recipients.
            Err(fetch::Unreadable::Locked(why)) => {
                decrypted = false;
                note = Some(format!("content not decrypted: {why}"));
            }
            Err(e) => damage.push(e.to_string()),
        }
    }
    Verified {
        backup_id: m.backup_id.to_string(),
        target: m.target.clone(),
        ok: damage.is_empty(),
        objects: if only.is_some() { 1 } else { m.objects.len() },
        bytes: m.size(),
        damage,
        encrypted,
        decrypted: decrypted && encrypted,
        note,
    }
}

fn print_verified(v: &Verified) {
    if v.backup_id.is_empty() {
        println!("{:<8} {}", "DAMAGED", v.damage.join("; "));
        return;
    }
    println!(
        "{:<8} {}  {}  {} objects, {}",
        if v.ok { "ok" } else { "DAMAGED" },
        v.target,
        v.backup_id,
        v.objects,
        human_bytes(v.bytes)
    );
    for d in &v.damage {
        println!("         {d}");
    }
    if v.decrypted {
        println!("         age-encrypted: content decrypted and authenticated");
    } else if let Some(n) = &v.note {
        println!("         age-encrypted: {n}");
    }
}

/// `pgctl rescue SERVICE --reset-wal --yes` ([`restore::rescue`]).
pub async fn rescue(service: &str, reset_wal: bool, yes: bool, json: bool) -> i32 {
    if !reset_wal {
        eprintln!(
            "pgctl: rescue needs what to do: --reset-wal (pg_resetwal, for a server that cannot start because of its WAL)"
        );
        return exit::USAGE;
    }
    if !yes {
        eprintln!(
            "pgctl: rescue --reset-wal loses the transactions whose WAL is gone and may leave data inconsistent; restoring a backup is the first choice (pgctl restore latest --to {service} --physical). It copies the data volume first and puts it back if the server still cannot start. Add --yes to go ahead (nothing was changed)"
        );
        return exit::USAGE;
    }
    let (_cfg, docker) = match config_and_docker().await {
        Ok(v) => v,
        Err(code) => return code,
    };
    let say = |line: &str| {
        if !json {
            eprintln!("{line}");
        }
    };
    let result = restore::rescue::reset_wal(&docker, service, &say).await;
    report(result.map(Some), json, |o: &restore::rescue::Outcome| {
        println!(
            "rescued {} ({}): the server answers: {}\nThe data volume {} was reset; its state before is kept in volume {}. Transactions after the last checkpoint whose WAL was lost are gone: check the data, take a backup now (pgctl backup {}), and when satisfied remove the copy (docker volume rm {}).",
            o.service, o.container, o.server, o.volume, o.copy, o.service, o.copy
        )
    })
}
