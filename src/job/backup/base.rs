//! One physical backup: `pg_basebackup` in the target, WAL held by a temporary slot, one tar
//! through the pipeline.

use super::*;

/// A temporary physical replication slot, held by a psql session in the target while a base
/// backup runs.
///
/// `pg_basebackup` writes one tar to stdout, which allows only `--wal-method=fetch`: the WAL
/// written during the backup is fetched at its end, and with the official image's
/// `wal_keep_size = 0` a checkpoint during the backup may already have removed it ("requested
/// WAL segment … has already been removed"). A slot that reserves WAL from before the backup
/// starts keeps every segment the backup needs. It is temporary: the server drops it when the
/// session ends (see [`pg::Held`]), so a forgotten slot can never fill the disk.
pub(super) async fn hold_wal(access: &Access, name: &str) -> Result<pg::Held, BackupError> {
    pg::Held::open(
        access,
        "postgres",
        &format!("SELECT pg_create_physical_replication_slot('{name}', true, true);"),
    )
    .await
    .map_err(|e| {
        BackupError::Refused(format!(
            "cannot create a temporary replication slot to keep the WAL of the base backup (check max_replication_slots): {e}"
        ))
    })
}

/// The cluster's system identifier and data directory (what a physical restore must match).
async fn cluster_identity(access: &Access) -> Result<(String, String), BackupError> {
    let row = access
        .query(
            "postgres",
            "SELECT system_identifier, current_setting('data_directory') FROM pg_control_system()",
        )
        .await?
        .into_iter()
        .next()
        .unwrap_or_default();
    row.split_once('|')
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .ok_or_else(|| BackupError::Refused(format!("cannot read the system identifier: {row:?}")))
}

/// `pg_basebackup` as one tar on stdout (WAL fetched at the end, held by the slot), through
/// the pipeline into `base.tar.*`.
async fn stream_base(
    ctx: &Ctx<'_>,
    access: &Access,
    spec: &TargetSpec,
    dir: &str,
) -> Result<Object, BackupError> {
    let name = sealed_name(spec, layout::base_object(spec.compression));
    let key = layout::join(&[dir, &name]);
    let args: Vec<String> = [
        "--no-password",
        "--pgdata=-",
        "--format=tar",
        "--wal-method=fetch",
        "--checkpoint=fast",
        "--label=pgbackup",
    ]
    .map(String::from)
    .to_vec();
    let (raw, up) = dump_object(
        ctx,
        access,
        spec,
        &key,
        "pg_basebackup",
        &args,
        "(base)",
        None,
    )
    .await?;
    Ok(stored(name, ObjectKind::Base, None, raw, up))
}

/// One physical base backup: `pg_basebackup` inside the target (always through `docker exec`,
/// a local replication connection), as one tar stream with the WAL needed for consistency
/// (`-X fetch`, kept by a temporary slot: [`hold_wal`]) and the server's own `backup_manifest`
/// inside, through the same pipeline.
pub async fn physical(
    ctx: &Ctx<'_>,
    target: &Target,
    id: BackupId,
) -> Result<Manifest, BackupError> {
    let now = id.time;
    let (spec, c) = running(ctx, target).await?;
    let Some(c) = c else {
        return Err(BackupError::Refused(format!(
            "{} is declared by URL: a base backup restores into a Docker volume of this host, so only containers get them; its logical backups cover every database",
            target.target
        )));
    };
    let access = Access::Exec {
        docker: ctx.docker.clone(),
        container: c.id.clone(),
        user: spec.user.clone(),
    };
    let server = server_info(&access, "pg_basebackup").await?;
    let (system_identifier, data_directory) = cluster_identity(&access).await?;
    // The cluster's databases as the backup starts: a drill checks the restored cluster has them.
    let databases = access
        .query(
            "postgres",
            "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY datname",
        )
        .await?;
    let dir = layout::backup_dir(ctx.store.prefix(), &spec.prefix, &id);
    ensure_own_folder(ctx, spec, target).await?;
    ensure_new_folder(ctx, &dir).await?;
    let mut objects = Vec::new();
    // Unique per run, like the id (slot names allow [a-z0-9_]).
    let slot_name = format!(
        "pgbackup_{}_{:06x}",
        id.time.format("%Y%m%d%H%M%S"),
        id.tag.unwrap_or(0)
    );
    let slot = hold_wal(&access, &slot_name).await?;
    {
        let started = std::time::Instant::now();
        let streamed = stream_base(ctx, &access, spec, &dir).await;
        slot.release().await;
        let object = streamed?;
        tracing::info!(target_id = %target.target, raw_bytes = object.raw_size, stored_bytes = object.size,
            duration_ms = started.elapsed().as_millis() as u64, "Base backup streamed.");
        objects.push(object);
        upload_sums(ctx, &dir, &objects).await?;
        let m = Manifest {
            format_version: manifest::FORMAT_VERSION,
            backup_id: id,
            kind: Kind::Physical,
            target: target.target.to_string(),
            prefix: dir.clone(),
            container: c.name.clone(),
            method: Method::Exec,
            format: Format::Tar,
            compression: spec.compression.to_string(),
            postgres: Postgres {
                server_version: server.version.clone(),
                major: server.major,
                dump_tool: server.dump_tool.clone(),
            },
            databases,
            objects: objects.clone(),
            started_at: now,
            finished_at: Utc::now(),
            tool: manifest::Tool::default(),
            physical: Some(manifest::Physical {
                system_identifier: system_identifier.clone(),
                data_directory: data_directory.clone(),
                wal_method: "fetch".into(),
                image: c.image.clone(),
            }),
            facts: None,
            encryption: encryption_of(spec),
        };
        commit_manifest(ctx, &dir, m).await
    }
}
