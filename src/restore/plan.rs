//! The restore plan: what will be replaced, created or refused, decided before anything
//! changes, and printed for the user.

use super::*;

/// One database to restore and what the target holds under that name now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbPlan {
    pub object: Object,
    pub database: String,
    pub exists: bool,
    /// Tables, views, sequences, functions, types and schemas of its own.
    pub objects: u64,
}

/// Where a logical restore goes: a container of this host, or a server reached by URL (a
/// target declared by `PGBACKUP_TARGET_<NAME>_URL`, or `--to-url`).
#[derive(Debug, Clone)]
pub enum Place {
    Container(Container),
    Url(Endpoint),
}

impl Place {
    /// How the restore reaches the server: `docker exec` into the container, or the sidecar's
    /// own client programs over the network.
    pub fn access(&self, docker: &DockerClient, user: &str) -> Access {
        match self {
            Place::Container(c) => exec_access(docker, c, user),
            Place::Url(e) => Access::to(e),
        }
    }

    /// The container's name, or the URL without its password.
    pub fn name(&self) -> String {
        match self {
            Place::Container(c) => c.name.clone(),
            Place::Url(e) => e.redacted(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub manifest: Manifest,
    pub place: Place,
    pub target: String,
    pub user: String,
    pub server_major: u32,
    pub restore_tool: String,
    /// The sidecar's own pg_restore, asked only when the target's cannot read the archive.
    pub sidecar_tool: Option<String>,
    /// Custom archives are turned into SQL by the sidecar's pg_restore (see `check`).
    pub convert_in_sidecar: bool,
    pub globals: Option<Object>,
    pub databases: Vec<DbPlan>,
    pub clean: bool,
    /// What earlier restores left on this server.
    pub leftovers: Leftovers,
    /// pg_restore options: the target's `pgbackup.restore_options`, then `--restore-option`s.
    pub options: Vec<String>,
    /// `--post-sql` scripts, run after the swap (a failure swaps back).
    pub scripts: Vec<super::scripts::Script>,
    /// The database the scripts start in: the target's `POSTGRES_DB` (or its user's).
    pub scripts_database: String,
    /// What decrypts the backup's objects, when it is encrypted.
    pub keys: Option<Arc<Identities>>,
    /// The target container's server as the sidecar reaches it over a network they share: its
    /// pg_restore then loads each database ([`Plan::direct`]) without docker exec's copy.
    pub network: Option<Network>,
}

/// A container's server reached from the sidecar (its name on a shared network, port 5432),
/// with the password the official image gave its user.
#[derive(Debug, Clone)]
pub struct Network {
    pub host: String,
    pub password: Option<crate::config::Secret>,
}

impl Network {
    pub fn access(&self, user: &str) -> Access {
        Access::Connect {
            host: self.host.clone(),
            port: 5432,
            user: user.to_string(),
            password: self.password.clone(),
            env: vec![],
        }
    }
}

/// Whether pg_restore of `tool_major` loads an archive of pg_dump `dump_major` into a server of
/// `server_major` by itself (`--dbname`): it reads the archive, and what it sends of its own
/// the server accepts. pg_restore 17+ sets `transaction_timeout`, which servers before 17
/// reject, so a newer pg_restore is used only from 17 on; the target's own always is.
pub fn loads_into(tool_major: u32, server_major: u32, dump_major: u32) -> bool {
    tool_major >= dump_major
        && (tool_major == server_major || (tool_major > server_major && server_major >= 17))
}

impl Plan {
    /// Whether custom archives are loaded by `pg_restore --dbname` (see `restore::direct`): when
    /// the pg_restore where the server is reached (the target's, or the sidecar's for a URL)
    /// [`loads_into`] it and the archive's SQL needs no adapting to the server (its pg_dump is
    /// not newer than the server). Plain
    /// and tar dumps, archives read by the sidecar's newer pg_restore and archives of a newer
    /// pg_dump go through psql, with [`sql::Rewriter`] adapting what needs it.
    pub fn direct(&self) -> bool {
        let (Some(dump), Some(tool)) = (
            pg::major_of(&self.manifest.postgres.dump_tool),
            pg::major_of(&self.restore_tool),
        ) else {
            return false;
        };
        self.manifest.format == Format::Custom
            && !self.convert_in_sidecar
            && dump <= self.server_major
            && loads_into(tool, self.server_major, dump)
    }

    /// The statements that keep a database's `public` schema as it was before Postgres 15
    /// (owned by the superuser, CREATE for everyone) when the backup's pg_dump is older than 15
    /// and the server is not: that pg_dump writes nothing for the schema it took as the
    /// default, so the newer server's default (owner `pg_database_owner`, no CREATE for PUBLIC)
    /// would silently apply. pg_dump 15+ and pg_upgrade keep it too. Runs before the dump's own
    /// statements, so any change the source made to the schema is applied on top. The owner is
    /// the restoring superuser (the bootstrap superuser owned it before 15; an upgrade usually
    /// keeps its name).
    pub fn public_schema_before_15(&self) -> Option<String> {
        let dump_major = pg::major_of(&self.manifest.postgres.dump_tool)?;
        (dump_major < 15 && self.server_major >= 15).then(|| {
            format!(
                "ALTER SCHEMA public OWNER TO {};\nGRANT CREATE ON SCHEMA public TO PUBLIC;\n",
                quote_ident(&self.user)
            )
        })
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.manifest;
        writeln!(
            f,
            "restore {} of {} ({}, Postgres {}, {}) into {} ({}, Postgres {}, as {})",
            m.backup_id,
            m.target,
            match m.format {
                Format::Custom => "custom",
                Format::Plain => "plain",
                Format::Tar => "tar",
            },
            m.postgres.major,
            crate::table::human_bytes(m.size()),
            self.target,
            self.place.name(),
            self.server_major,
            self.user
        )?;
        if let Some(e) = &m.encryption {
            writeln!(
                f,
                "  encrypted  with {} to {}; decrypted with {}",
                e.method,
                e.recipients.join(", "),
                self.keys
                    .as_ref()
                    .map_or("(no identity given)".to_string(), |k| format!(
                        "the identities in {}",
                        k.source
                    ))
            )?;
        }
        if self.server_major > m.postgres.major {
            writeln!(
                f,
                "  upgrade    Postgres {} → {}: roles, databases with their owners, settings, comments and grants, extensions and large objects are carried over; planner statistics are not (run ANALYZE afterwards)",
                m.postgres.major, self.server_major
            )?;
        }
        if self.public_schema_before_15().is_some() {
            writeln!(
                f,
                "  public     each database's public schema stays as before 15 (owned by {}, CREATE for everyone), as pg_upgrade keeps it; REVOKE CREATE ON SCHEMA public FROM PUBLIC afterwards for 15's safer default",
                self.user
            )?;
        }
        if let Some(g) = &self.globals {
            writeln!(
                f,
                "  roles      from {} (missing roles are created)",
                g.name
            )?;
        }
        if !self.options.is_empty() {
            writeln!(f, "  options    pg_restore {}", self.options.join(" "))?;
        }
        if self.convert_in_sidecar {
            writeln!(
                f,
                "  archives   read by the sidecar's {} (the target has {})",
                self.sidecar_tool.as_deref().unwrap_or("pg_restore"),
                self.restore_tool
            )?;
        }
        for d in &self.databases {
            let what = match (d.exists, d.objects) {
                (false, _) => "created".to_string(),
                (true, 0) => "exists, empty: replaced".to_string(),
                (true, n) if self.clean => format!("exists, {n} objects: replaced (--clean)"),
                (true, n) => format!("exists, {n} objects"),
            };
            writeln!(
                f,
                "  database   {:<20} from {} ({what})",
                d.database, d.object.name
            )?;
        }
        writeln!(
            f,
            "  method     each database is loaded into a new database{}; all take their names in one transaction at the end",
            match (self.direct(), &self.network) {
                (true, Some(n)) => format!(
                    " by the sidecar's pg_restore --dbname, connected to {}:5432",
                    n.host
                ),
                (true, None) => " by pg_restore --dbname".to_string(),
                (false, _) => String::new(),
            }
        )?;
        if !self.scripts.is_empty() {
            let names: Vec<&str> = self.scripts.iter().map(|(n, _)| n.as_str()).collect();
            writeln!(
                f,
                "  post-sql   {} in database {}, after the names are taken; a failing script puts the old databases back",
                names.join(", "),
                self.scripts_database
            )?;
        }
        for db in &self.leftovers.abandoned_databases {
            writeln!(
                f,
                "  cleanup    {db}: the temporary database of an interrupted restore (no session of it is alive), dropped first"
            )?;
        }
        for role in &self.leftovers.abandoned_roles {
            writeln!(
                f,
                "  cleanup    role {role}: created by an interrupted restore that never completed, dropped first"
            )?;
        }
        for db in &self.leftovers.replaced {
            writeln!(
                f,
                "  warning    {db} holds a database an earlier restore replaced and could not drop: drop it when you no longer need it (DROP DATABASE {})",
                quote_ident(db)
            )?;
        }
        for run in &self.leftovers.running {
            writeln!(
                f,
                "  warning    another restore (run {run}) is running on this server now"
            )?;
        }
        Ok(())
    }
}

/// The refusals that need no I/O: overwriting without `--clean`, an archive the target's
/// `pg_restore` is too old to read.
pub fn check(plan: &Plan) -> Result<(), RestoreError> {
    let dump_major = pg::major_of(&plan.manifest.postgres.dump_tool).unwrap_or(0);
    let tool_major = pg::major_of(&plan.restore_tool).unwrap_or(0);
    let sidecar_major = plan
        .sidecar_tool
        .as_deref()
        .and_then(pg::major_of)
        .unwrap_or(0);
    if plan.manifest.format == Format::Custom
        && tool_major < dump_major
        && sidecar_major < dump_major
    {
        return Err(RestoreError::Refused(format!(
            "backup {} was written by {} but {} has {} and the sidecar {}, neither of which can read it: nothing was changed. Use a pgbackup image with Postgres {dump_major} client tools, or restore into a server with Postgres {dump_major} or newer",
            plan.manifest.backup_id,
            plan.manifest.postgres.dump_tool,
            plan.target,
            plan.restore_tool,
            plan.sidecar_tool.as_deref().unwrap_or("has no pg_restore")
        )));
    }
    if !plan.options.is_empty() && plan.manifest.format != Format::Custom {
        return Err(RestoreError::Refused(format!(
            "pg_restore options ({}) apply to custom-format backups, and {} is a plain SQL dump (pgbackup.format=plain): nothing was changed. Restore it without them, or take custom-format backups",
            plan.options.join(" "),
            plan.manifest.backup_id
        )));
    }
    if plan.server_major < plan.manifest.postgres.major {
        return Err(RestoreError::Refused(format!(
            "backup {} is of a Postgres {} server but {} runs Postgres {}: nothing was changed. A logical backup restores into the same major or a newer one",
            plan.manifest.backup_id, plan.manifest.postgres.major, plan.target, plan.server_major
        )));
    }
    let busy: Vec<String> = plan
        .databases
        .iter()
        .filter(|d| d.exists && d.objects > 0)
        .map(|d| format!("{} ({} objects)", d.database, d.objects))
        .collect();
    if !busy.is_empty() && !plan.clean {
        return Err(RestoreError::Refused(format!(
            "{} already holds data in {}: nothing was changed. Pass --clean to replace it (each database is replaced as a whole by the backup's, after every database of the backup has loaded; on any failure the old data stays), or restore into another target with --to",
            plan.target,
            busy.join(", ")
        )));
    }
    Ok(())
}

/// SQL counting what a database holds of its own (schemas other than the system ones).
pub(super) const OWN_OBJECTS: &str = "SELECT
  (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_')
+ (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_')
+ (SELECT count(*) FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_'
       AND t.typrelid = 0 AND t.typcategory <> 'A')
+ (SELECT count(*) FROM pg_namespace
     WHERE nspname NOT IN ('pg_catalog', 'information_schema', 'public') AND nspname !~ '^pg_')";

/// Looks at the target and the backup and decides what will happen. Changes nothing.
pub async fn plan(
    docker: &DockerClient,
    defaults: &Defaults,
    manifest: Manifest,
    object: Option<String>,
    req: &Request,
) -> Result<Plan, RestoreError> {
    if manifest.kind == Kind::Physical || manifest.format == Format::Tar {
        return Err(RestoreError::Usage(format!(
            "{} is a physical base backup: restore it with `pgctl restore … --physical` (into a new volume the service is switched onto), or unpack base.tar into an empty data directory by hand",
            manifest.backup_id
        )));
    }
    if let Some(e) = &req.to_url {
        let mut req = req.clone();
        // A database in the URL's path is the one restored (as --db says).
        if let [db] = e.databases.as_slice() {
            match &req.db {
                Some(other) if other != db => {
                    return Err(RestoreError::Usage(format!(
                        "--to-url names database {db:?} but --db asks for {other:?}: name one of them"
                    )));
                }
                _ => req.db = Some(db.clone()),
            }
        } else if e.databases.len() > 1 {
            return Err(RestoreError::Usage(format!(
                "--to-url names {} databases: name none (every database of the backup) or one",
                e.databases.len()
            )));
        }
        let at = At {
            user: e.user.clone(),
            options: vec![],
            scripts_database: "postgres".into(),
            target: e.redacted(),
        };
        return plan_at(docker, manifest, object, &req, Place::Url(e.clone()), at).await;
    }
    let to = req.to.clone().unwrap_or_else(|| manifest.target.clone());
    if let Some(d) = defaults.declared.iter().find(|d| d.name == to) {
        let t = Target::declared(d, defaults);
        let (Some(e), Some(spec)) = (t.endpoint.clone(), t.settings()) else {
            return Err(RestoreError::Usage(format!(
                "{to} is declared by {} but its settings are not valid (see pgctl status); nothing was changed",
                d.url_variable()
            )));
        };
        let at = At {
            user: e.user.clone(),
            options: [spec.restore_options.clone(), req.options.clone()].concat(),
            scripts_database: e
                .databases
                .first()
                .cloned()
                .unwrap_or_else(|| "postgres".into()),
            target: to.clone(),
        };
        return plan_at(docker, manifest, object, req, Place::Url(e), at).await;
    }
    let source_project = manifest.target.split_once('/').map(|(p, _)| p.to_string());
    let container = find_container(docker, &to, source_project.as_deref()).await?;
    plan_into(docker, defaults, manifest, object, req, container).await
}

/// Who restores where, beside the place itself.
struct At {
    /// The role the restore runs as.
    user: String,
    /// pg_restore options: the target's own, then `--restore-option`s.
    options: Vec<String>,
    /// The database `--post-sql` scripts start in.
    scripts_database: String,
    /// The target's name, as the plan shows it.
    target: String,
}

/// [`plan`] into a container already found (a restore drill's throwaway server).
pub async fn plan_into(
    docker: &DockerClient,
    defaults: &Defaults,
    manifest: Manifest,
    object: Option<String>,
    req: &Request,
    container: Container,
) -> Result<Plan, RestoreError> {
    ensure_postgres(&container)?;
    let user = user_of(&container, defaults);
    let mut options = match container.labels.get(crate::config::labels::RESTORE_OPTIONS_LABEL) {
        None => vec![],
        Some(v) => crate::config::labels::validate_restore_options(v).map_err(|why| {
            RestoreError::Usage(format!(
                "{} has label {}={v:?}, which is not valid: expected {why}; fix the label (nothing was changed)",
                container.name,
                crate::config::labels::RESTORE_OPTIONS_LABEL
            ))
        })?,
    };
    options.extend(req.options.iter().cloned());
    let scripts_database = container
        .env
        .get("POSTGRES_DB")
        .filter(|d| !d.is_empty())
        .cloned()
        .unwrap_or_else(|| user.clone());
    let target = TargetId::of(&container.labels, &container.name)
        .map(|t| t.to_string())
        .unwrap_or_else(|| container.name.clone());
    let at = At {
        user,
        options,
        scripts_database,
        target,
    };
    plan_at(
        docker,
        manifest,
        object,
        req,
        Place::Container(container),
        at,
    )
    .await
}

/// Reads the server at `place` and decides what the restore will do. Changes nothing.
async fn plan_at(
    docker: &DockerClient,
    manifest: Manifest,
    object: Option<String>,
    req: &Request,
    place: Place,
    at: At,
) -> Result<Plan, RestoreError> {
    let At {
        user,
        options,
        scripts_database,
        target,
    } = at;
    let scripts = match &req.post_sql {
        Some(dir) => super::scripts::read(dir)?,
        None => vec![],
    };
    let access = place.access(docker, &user);
    let chosen = chosen_objects(&manifest, object.as_deref(), req.db.as_deref())?;
    let globals = manifest
        .objects
        .iter()
        .find(|o| o.kind == ObjectKind::Globals)
        .cloned();
    let Tools {
        server_major,
        restore_tool,
        sidecar_tool,
        convert_in_sidecar,
    } = tools(&access, &manifest, &place.name()).await?;
    let leftovers = leftovers_of(&access).await?;
    let databases = db_plans(&access, chosen).await?;
    let mut plan = Plan {
        manifest,
        place,
        target,
        user,
        server_major,
        restore_tool,
        sidecar_tool,
        convert_in_sidecar,
        globals,
        databases,
        clean: req.clean,
        leftovers,
        options,
        scripts,
        scripts_database,
        keys: req.keys.clone(),
        network: None,
    };
    if let (true, Place::Container(c)) = (plan.direct(), &plan.place) {
        plan.network = over_network(docker, c, &plan).await;
    }
    Ok(plan)
}

/// The target container's server as the sidecar reaches it, when the sidecar's pg_restore
/// [`loads_into`] it and a connection with the container's credentials answers; `None` (the
/// load runs through docker exec) otherwise, with the reason logged.
async fn over_network(docker: &DockerClient, c: &Container, plan: &Plan) -> Option<Network> {
    let dump = pg::major_of(&plan.manifest.postgres.dump_tool)?;
    let why_not = async {
        let tool = pg::local_version("pg_restore")
            .await
            .map_err(|e| e.to_string())?;
        let major = pg::major_of(&tool).unwrap_or(0);
        if !loads_into(major, plan.server_major, dump) {
            return Err(format!(
                "the sidecar's {tool} does not load into Postgres {}",
                plan.server_major
            ));
        }
        let network = Network {
            host: c.name.clone(),
            password: pg::container_password(docker, c)
                .await
                .map_err(|e| e.to_string())?,
        };
        let probe = network.access(&plan.user);
        match tokio::time::timeout(Duration::from_secs(15), probe.query("postgres", "SELECT 1"))
            .await
        {
            Ok(Ok(_)) => Ok(network),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer within 15 s".into()),
        }
    };
    match why_not.await {
        Ok(n) => Some(n),
        Err(e) => {
            tracing::info!(container = %c.name, "The restore loads through docker exec: the sidecar cannot connect to the server itself ({e}).");
            None
        }
    }
}

/// The database objects a restore loads: all of the backup's, or the one `--db` or an object
/// key names (which must agree). Pure.
pub(super) fn chosen_objects(
    manifest: &Manifest,
    object: Option<&str>,
    db: Option<&str>,
) -> Result<Vec<Object>, RestoreError> {
    let named = match object {
        None => None,
        Some(name) => Some(
            manifest
                .objects
                .iter()
                .find(|o| o.name == name)
                .ok_or_else(|| {
                    RestoreError::Usage(format!(
                        "backup {} has no object {name:?}; it holds {}",
                        manifest.backup_id,
                        names(manifest)
                    ))
                })?,
        ),
    };
    if let (Some(db), Some(o)) = (db, named)
        && let Some(of) = &o.database
        && db != of
    {
        return Err(RestoreError::Usage(format!(
            "{} holds database {of:?} but --db asks for {db:?}: name the backup folder with --db {db}, or the object without --db",
            o.name
        )));
    }
    let wanted = db
        .map(String::from)
        .or_else(|| named.and_then(|o| o.database.clone()));
    let chosen: Vec<Object> = manifest
        .objects
        .iter()
        .filter(|o| o.kind == ObjectKind::Database)
        .filter(|o| wanted.is_none() || o.database == wanted)
        .cloned()
        .collect();
    if let Some(db) = &wanted
        && chosen.is_empty()
    {
        return Err(RestoreError::Usage(format!(
            "backup {} has no database {db:?}; it holds {}",
            manifest.backup_id,
            manifest.databases.join(", ")
        )));
    }
    Ok(chosen)
}

/// The target's server and the programs that can read the backup.
pub(super) struct Tools {
    server_major: u32,
    restore_tool: String,
    sidecar_tool: Option<String>,
    convert_in_sidecar: bool,
}

/// The target's major version and `pg_restore`; the sidecar's `pg_restore` when the target's
/// cannot read a custom archive of a newer major.
pub(super) async fn tools(
    access: &Access,
    manifest: &Manifest,
    to: &str,
) -> Result<Tools, RestoreError> {
    let version = access
        .query("postgres", "SELECT current_setting('server_version_num')")
        .await?;
    let server_major = version
        .first()
        .and_then(|v| pg::major_of(v))
        .ok_or_else(|| RestoreError::Failed(format!("cannot read the server version of {to}")))?;
    let restore_tool = access.version("pg_restore").await?;
    let dump_major = pg::major_of(&manifest.postgres.dump_tool).unwrap_or(0);
    let target_reads = pg::major_of(&restore_tool).unwrap_or(0) >= dump_major;
    let sidecar_tool = if manifest.format == Format::Custom && !target_reads {
        pg::local_version("pg_restore").await.ok()
    } else {
        None
    };
    let convert_in_sidecar = manifest.format == Format::Custom
        && !target_reads
        && sidecar_tool
            .as_deref()
            .and_then(pg::major_of)
            .is_some_and(|m| m >= dump_major);
    Ok(Tools {
        server_major,
        restore_tool,
        sidecar_tool,
        convert_in_sidecar,
    })
}

/// Each database to load: whether it exists in the target, and how many objects of its own it
/// holds (what `--clean` would replace).
pub(super) async fn db_plans(
    access: &Access,
    chosen: Vec<Object>,
) -> Result<Vec<DbPlan>, RestoreError> {
    let existing: BTreeSet<String> = access
        .query("postgres", "SELECT datname FROM pg_database")
        .await?
        .into_iter()
        .collect();
    let mut databases = Vec::new();
    for o in chosen {
        let database = o.database.clone().unwrap_or_default();
        let exists = existing.contains(&database);
        let objects = if exists {
            access
                .query(&database, OWN_OBJECTS)
                .await?
                .first()
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(0)
        } else {
            0
        };
        databases.push(DbPlan {
            object: o,
            database,
            exists,
            objects,
        });
    }
    Ok(databases)
}

pub(super) fn names(m: &Manifest) -> String {
    m.objects
        .iter()
        .map(|o| o.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn exec_access(docker: &DockerClient, c: &Container, user: &str) -> Access {
    Access::Exec {
        docker: docker.clone(),
        container: c.id.clone(),
        user: user.to_string(),
    }
}
