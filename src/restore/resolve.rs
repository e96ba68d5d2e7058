//! Which backup and which container a restore names: one name-resolution rule for logical
//! and physical restores, refusing what is not Postgres or not in scope.

use super::*;

/// The role restores run as: the target's `pgbackup.user` label when it is a valid target, else
/// its `POSTGRES_USER`, else `postgres`.
pub(super) fn user_of(c: &Container, defaults: &Defaults) -> String {
    Target::from_container(c, defaults)
        .and_then(|t| t.settings().map(|s| s.user.clone()))
        .or_else(|| {
            c.env
                .get("POSTGRES_USER")
                .filter(|u| !u.is_empty())
                .cloned()
        })
        .unwrap_or_else(|| "postgres".to_string())
}

/// The one rule naming a container: `project/service`, container name or id exactly; else a
/// service name (or an id prefix of 12+) found in several compose projects resolves to the one
/// in `prefer`, then to `own` (the sidecar's project). `Err` holds the names of the candidates:
/// none (not found) or several (ambiguous). Pure.
pub fn choose_container<'a>(
    all: &'a [Container],
    name: &str,
    prefer: Option<&str>,
    own: Option<&str>,
) -> Result<&'a Container, Vec<String>> {
    let ids: Vec<(Option<TargetId>, &Container)> = all
        .iter()
        .map(|c| (TargetId::of(&c.labels, &c.name), c))
        .collect();
    let exact: Vec<&Container> = ids
        .iter()
        .filter(|(t, c)| {
            t.as_ref().is_some_and(|t| t.to_string() == name) || c.name == name || c.id == name
        })
        .map(|(_, c)| *c)
        .collect();
    if let [c] = exact.as_slice() {
        return Ok(c);
    }
    let by_service: Vec<(Option<&TargetId>, &Container)> = ids
        .iter()
        .filter(|(t, c)| {
            t.as_ref().is_some_and(|t| t.service == name)
                || (name.len() >= 12 && c.id.starts_with(name))
        })
        .map(|(t, c)| (t.as_ref(), *c))
        .collect();
    if by_service.len() > 1 {
        for project in [prefer, own].into_iter().flatten() {
            let mine: Vec<&Container> = by_service
                .iter()
                .filter(|(t, _)| t.is_some_and(|t| t.project.as_deref() == Some(project)))
                .map(|(_, c)| *c)
                .collect();
            if let [c] = mine.as_slice() {
                return Ok(c);
            }
        }
    }
    match by_service.as_slice() {
        [(_, c)] => Ok(c),
        many => Err(many
            .iter()
            .map(|(t, c)| t.map(|t| t.to_string()).unwrap_or_else(|| c.name.clone()))
            .collect()),
    }
}

/// Finds a running container by [`choose_container`]'s rule.
pub async fn find_container(
    docker: &DockerClient,
    name: &str,
    prefer: Option<&str>,
) -> Result<Container, RestoreError> {
    let all = docker.list_running(&[]).await?;
    match choose_container(&all, name, prefer, docker.own_project()) {
        Ok(c) => Ok(c.clone()),
        Err(none) if none.is_empty() => Err(RestoreError::Usage(outside_scope(docker, name).await.unwrap_or_else(|| format!(
            "no running container is named {name:?} (as project/service, service or container name): start it, or check `docker compose ps`"
        )))),
        Err(many) => Err(ambiguous(name, &many)),
    }
}

pub(super) fn ambiguous(name: &str, many: &[String]) -> RestoreError {
    RestoreError::Usage(format!(
        "{name:?} is ambiguous: {}; name it as project/service",
        many.join(", ")
    ))
}

/// Refuses a restore target that is not a Postgres server (the sidecar, Garage, an app): the
/// official image and those built on it set `PG_MAJOR`/`PGDATA`, others (Bitnami) `POSTGRESQL_*`.
pub fn ensure_postgres(c: &Container) -> Result<(), RestoreError> {
    let looks = c.env.keys().any(|k| {
        matches!(k.as_str(), "PG_MAJOR" | "PGDATA" | "PG_VERSION") || k.starts_with("POSTGRES")
    });
    if looks {
        Ok(())
    } else {
        Err(RestoreError::Usage(format!(
            "{} is not a Postgres container (image {}: no PG_MAJOR, PGDATA or POSTGRES_* in its environment): pass the Postgres service with --to",
            c.name, c.image
        )))
    }
}

/// Explains a name that matches only containers outside the scope (another compose project).
pub(super) async fn outside_scope(docker: &DockerClient, name: &str) -> Option<String> {
    let all = docker.list_running_anywhere(&[]).await.ok()?;
    let found: Vec<String> = all
        .iter()
        .filter(|c| !c.in_scope)
        .filter(|c| {
            TargetId::of(&c.labels, &c.name)
                .is_some_and(|t| t.to_string() == name || t.service == name)
                || c.name == name
                || c.id == name
        })
        .map(|c| {
            TargetId::of(&c.labels, &c.name)
                .map(|t| t.to_string())
                .unwrap_or_else(|| c.name.clone())
        })
        .collect();
    (!found.is_empty()).then(|| {
        format!(
            "{name:?} is {}, outside this sidecar's scope ({}): pgbackup acts only on its own compose project unless PGBACKUP_SCOPE names others (or host)",
            found.join(", "),
            docker.scope()
        )
    })
}

/// The folder holding a target's backups and the target's identity: from its
/// `pgbackup.prefix` when it runs with labels, else `project/service` as named.
pub(super) async fn source_dir(
    docker: &DockerClient,
    store: &dyn Store,
    defaults: &Defaults,
    name: &str,
) -> Result<(String, String), RestoreError> {
    if let Some(d) = defaults.declared.iter().find(|d| d.name == name) {
        let t = Target::declared(d, defaults);
        let folder = t.settings().map_or(name.to_string(), |s| s.prefix.clone());
        return Ok((
            layout::target_dir(store.prefix(), &folder),
            name.to_string(),
        ));
    }
    if let Ok(c) = find_container(docker, name, None).await {
        if let Some(t) = Target::from_container(&c, defaults)
            && let Some(spec) = t.settings()
        {
            return Ok((
                layout::target_dir(store.prefix(), &spec.prefix),
                t.target.to_string(),
            ));
        }
        if let Some(t) = TargetId::of(&c.labels, &c.name) {
            return Ok((
                layout::target_dir(store.prefix(), &t.to_string()),
                t.to_string(),
            ));
        }
    }
    Ok((layout::target_dir(store.prefix(), name), name.to_string()))
}

pub(super) async fn by_key(
    store: &dyn Store,
    dir: &str,
    id: &BackupId,
) -> Result<Manifest, RestoreError> {
    let key = layout::join(&[dir, &id.to_string(), layout::MANIFEST]);
    let found = store
        .head(&key)
        .await
        .map(|s| s.is_some())
        .map_err(|e| RestoreError::Failed(e.to_string()))?;
    if !found {
        return Err(RestoreError::Usage(format!(
            "{dir}/{id} is not a committed backup (no manifest.json): see `pgctl list`"
        )));
    }
    catalog::read_manifest(store, &key)
        .await
        .map_err(RestoreError::Failed)
}

/// Finds the manifest `req.backup` names. Only committed backups are ever found.
pub async fn resolve_backup(
    docker: &DockerClient,
    store: &dyn Store,
    defaults: &Defaults,
    req: &Request,
) -> Result<(Manifest, Option<String>), RestoreError> {
    let s3err = |e: crate::store::StoreError| RestoreError::Failed(e.to_string());
    match &req.backup {
        BackupRef::Latest => {
            let source = req.from.as_deref().or(req.to.as_deref()).ok_or_else(|| {
                RestoreError::Usage(
                    "`latest` needs a target: pass --from TARGET (whose backups) or --to TARGET (restores its own latest)".into(),
                )
            })?;
            let (dir, id) = source_dir(docker, store, defaults, source).await?;
            let m = catalog::latest(store, &dir, req.kind, Some(&id))
                .await
                .map_err(s3err)?
                .ok_or_else(|| {
                    RestoreError::Usage(format!(
                        "no committed {} backup of {source} under {dir}/: see `pgctl list`",
                        req.kind
                    ))
                })?;
            Ok((m, None))
        }
        BackupRef::Key { dir, id, object } => Ok((by_key(store, dir, id).await?, object.clone())),
        BackupRef::Id(id) => {
            if let Some(from) = &req.from {
                let (dir, _) = source_dir(docker, store, defaults, from).await?;
                return Ok((by_key(store, &dir, id).await?, None));
            }
            let mut keys = catalog::manifest_keys(store, None).await.map_err(s3err)?;
            keys.retain(|(k, _)| k == id);
            let (found, problems) = catalog::read_manifests(store, &keys).await;
            if let Some(p) = problems.first() {
                return Err(RestoreError::Failed(p.clone()));
            }
            match found.len() {
                1 => Ok((found.into_iter().next().expect("one"), None)),
                0 => Err(RestoreError::Usage(format!(
                    "no committed backup has id {id}: see `pgctl list`"
                ))),
                _ => Err(RestoreError::Usage(format!(
                    "several targets have a backup {id} ({}): pass --from TARGET or the full key",
                    found
                        .iter()
                        .map(|m| m.target.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_resolves_exactly_then_by_service_in_the_preferred_or_own_project() {
        let shop = crate::discovery::test_container("id-shop-db", "db", &[], true);
        let mut other = crate::discovery::test_container("id-other-db", "db", &[], true);
        other
            .labels
            .insert("com.docker.compose.project".into(), "other".into());
        other.name = "other-db-1".into();
        let all = [shop, other];
        let name = |r: Result<&Container, Vec<String>>| r.map(|c| c.name.clone());
        assert_eq!(
            name(choose_container(&all, "other/db", None, None)),
            Ok("other-db-1".into())
        );
        assert_eq!(
            name(choose_container(&all, "shop-db-1", None, None)),
            Ok("shop-db-1".into())
        );
        assert_eq!(
            name(choose_container(&all, "db", None, None)),
            Err(vec!["shop/db".to_string(), "other/db".to_string()])
        );
        assert_eq!(
            name(choose_container(&all, "db", Some("other"), Some("shop"))),
            Ok("other-db-1".into())
        );
        assert_eq!(
            name(choose_container(&all, "db", None, Some("shop"))),
            Ok("shop-db-1".into())
        );
        assert_eq!(
            name(choose_container(&all, "cache", None, Some("shop"))),
            Err(vec![])
        );
    }
}
