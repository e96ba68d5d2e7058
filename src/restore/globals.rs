//! Roles from `globals.sql`: which statements a restore runs, which it skips (roles that exist,
//! the bootstrap superuser), and the script that creates them. Mostly pure.

use super::*;

/// A role name as written by pg_dumpall: bare (lower case) or double-quoted.
pub(super) fn parse_ident(s: &str) -> Option<(String, &str)> {
    if let Some(rest) = s.strip_prefix('"') {
        let mut name = String::new();
        let mut chars = rest.char_indices();
        while let Some((i, ch)) = chars.next() {
            if ch == '"' {
                if rest[i + 1..].starts_with('"') {
                    name.push('"');
                    chars.next();
                } else {
                    return Some((name, &rest[i + 1..]));
                }
            } else {
                name.push(ch);
            }
        }
        None
    } else {
        let end = s
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
            .unwrap_or(s.len());
        (end > 0).then(|| (s[..end].to_string(), &s[end..]))
    }
}

/// The role a globals line creates or alters, if any.
pub(super) fn role_of_line(line: &str) -> Option<String> {
    for prefix in [
        "CREATE ROLE ",
        "ALTER ROLE ",
        "COMMENT ON ROLE ",
        "SECURITY LABEL FOR ",
    ] {
        if let Some(rest) = line.strip_prefix(prefix) {
            if prefix == "SECURITY LABEL FOR " {
                let at = rest.find(" ON ROLE ")?;
                return parse_ident(&rest[at + 9..]).map(|(n, _)| n);
            }
            return parse_ident(rest).map(|(n, _)| n);
        }
    }
    None
}

/// What to run of a `pg_dumpall --globals-only` script on a server that already has
/// `existing` roles: roles it lacks are created with their attributes; roles it has are left
/// exactly as they are (their passwords too); tablespaces, which cannot be created inside a
/// transaction and whose paths belong to the old server, are skipped. Returns the script, the
/// roles it creates and what was skipped.
pub fn filter_globals(
    script: &str,
    existing: &BTreeSet<String>,
) -> (String, Vec<String>, Vec<String>) {
    let mut out = String::new();
    let mut created = Vec::new();
    let mut skipped = Vec::new();
    for line in script.lines() {
        if line.starts_with("CREATE TABLESPACE ") || line.starts_with("ALTER TABLESPACE ") {
            skipped.push(line.to_string());
            continue;
        }
        if let Some(role) = role_of_line(line) {
            if existing.contains(&role) {
                continue;
            }
            if line.starts_with("CREATE ROLE ") {
                created.push(role);
            }
        }
        if let Some(stmt) = granted_by_fallback(line) {
            out.push_str(&stmt);
            continue;
        }
        // psql meta-commands (\restrict, \connect) and everything else pass through.
        out.push_str(line);
        out.push('\n');
    }
    (out, created, skipped)
}

/// `GRANT role TO member … GRANTED BY grantor;` as pg_dumpall 16+ writes every membership. The
/// grantor may not exist on the target (another superuser name) or may not hold ADMIN OPTION
/// there (a role the restore created as superuser): then the membership is granted by the
/// restoring superuser instead of failing the whole restore, with a notice.
pub(super) fn granted_by_fallback(line: &str) -> Option<String> {
    let stmt = line.strip_suffix(';')?;
    if !stmt.starts_with("GRANT ") {
        return None;
    }
    let at = stmt.rfind(" GRANTED BY ")?;
    let without = &stmt[..at];
    Some(format!(
        "DO $pgbackup$\nBEGIN\n  EXECUTE {};\nEXCEPTION WHEN insufficient_privilege OR undefined_object THEN\n  RAISE NOTICE 'pgbackup: % - granted by the restoring role instead', SQLERRM;\n  EXECUTE {};\nEND\n$pgbackup$;\n",
        sql::quote_literal(stmt),
        sql::quote_literal(without)
    ))
}

/// Reads the globals object whole, verifies it and keeps what applies to this server.
pub(super) async fn globals_script(
    store: &dyn Store,
    plan: &Plan,
    g: &Object,
    access: &Access,
) -> Result<(String, Vec<String>, Vec<String>), RestoreError> {
    if g.size > GLOBALS_LIMIT {
        return Err(RestoreError::Failed(format!(
            "{} is {} bytes; globals larger than {GLOBALS_LIMIT} are not restored automatically",
            g.name, g.size
        )));
    }
    let m = &plan.manifest;
    let (mut reader, tallies) = fetch::content(store, m, g, plan.keys.as_deref())
        .await
        .map_err(RestoreError::unreadable)?;
    let mut text = String::new();
    let read = reader.read_to_string(&mut text).await;
    drop(reader);
    if let Err(e) = read {
        // Cut short: the stored object, read again whole, tells damage from a broken read.
        let damage = fetch::cut_short(store, m, g).await;
        return Err(RestoreError::Failed(format!(
            "reading {} failed: {e}{damage}: nothing was restored",
            g.name
        )));
    }
    tallies
        .verdict(g)
        .map_err(|e| RestoreError::Failed(format!("{e}: nothing was restored")))?;
    let existing: BTreeSet<String> = access
        .query("postgres", "SELECT rolname FROM pg_roles")
        .await?
        .into_iter()
        .collect();
    let (script, created, skipped) = filter_globals(&text, &existing);
    for s in &skipped {
        tracing::warn!("Skipped from the globals: {s} (create tablespaces by hand)");
    }
    Ok((script, created, skipped))
}
