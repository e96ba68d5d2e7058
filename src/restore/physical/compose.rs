//! The compose-file side of a physical restore: find which file gives a service its data
//! volume, point that reference at a new volume key, and write the file back atomically with the
//! previous version kept as `.bak`. Edits go through yamlpatch, so comments, anchors, quoting and
//! layout stay as the user wrote them; only the volume reference changes.

use std::path::{Path, PathBuf};

use serde_yaml::Value;
use yamlpatch::{Op, Patch};
use yamlpath::{Document, route};

/// How the service's volume entry is written.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Form {
    /// `- db-data:/var/lib/postgresql/data[:mode]`
    Short,
    /// `- {type: volume, source: db-data, target: …}`
    Long,
}

/// A planned edit of one compose file (also kept in a physical restore's journal).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Edit {
    /// The file as the compose labels name it (a host path).
    pub file: PathBuf,
    /// Where this process reads and writes it (the same path, or through a bind mount).
    pub local: PathBuf,
    pub service: String,
    /// Index of the entry in the service's `volumes:` list.
    pub index: usize,
    pub old_key: String,
    pub new_key: String,
    pub before: String,
    pub after: String,
}

impl Edit {
    /// The changed lines, `-`/`+` prefixed, for plans and notes.
    pub fn diff(&self) -> String {
        let old: Vec<&str> = self.before.lines().collect();
        let new: Vec<&str> = self.after.lines().collect();
        let mut out = String::new();
        for l in old.iter().filter(|l| !new.contains(l)) {
            out.push_str(&format!("      - {}\n", l.trim()));
        }
        for l in new.iter().filter(|l| !old.contains(l)) {
            out.push_str(&format!("      + {}\n", l.trim()));
        }
        out
    }

    pub fn backup_path(&self) -> PathBuf {
        let mut s = self.local.clone().into_os_string();
        s.push(".bak");
        PathBuf::from(s)
    }
}

fn trim_slash(p: &str) -> &str {
    if p.len() > 1 {
        p.trim_end_matches('/')
    } else {
        p
    }
}

/// The volume key and form of a `volumes:` entry when it mounts at `target`.
fn entry_for(entry: &Value, target: &str) -> Option<(String, Form)> {
    match entry {
        Value::String(s) => {
            let mut parts = s.splitn(3, ':');
            let source = parts.next()?;
            let dest = parts.next()?;
            (trim_slash(dest) == trim_slash(target)).then(|| (source.to_string(), Form::Short))
        }
        Value::Mapping(m) => {
            let get = |k: &str| m.get(Value::String(k.into())).and_then(Value::as_str);
            let dest = get("target")?;
            (trim_slash(dest) == trim_slash(target))
                .then(|| (get("source").unwrap_or("").to_string(), Form::Long))
        }
        _ => None,
    }
}

fn is_named_volume(source: &str) -> bool {
    !source.is_empty()
        && !source.starts_with(['.', '/', '~', '$'])
        && source
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Declared top-level volume keys of one file.
fn declared(doc: &Value) -> Vec<String> {
    doc.get("volumes")
        .and_then(Value::as_mapping)
        .map(|m| {
            m.keys()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// `db-data` → `db-data-restored-<stamp>`; a key that is itself a restored one keeps its base.
pub fn restored_key(old_key: &str, stamp: &str, taken: &[String]) -> String {
    let base = old_key.split("-restored-").next().unwrap_or(old_key);
    let first = format!("{base}-restored-{stamp}");
    (1..)
        .map(|n| {
            if n == 1 {
                first.clone()
            } else {
                format!("{first}-{n}")
            }
        })
        .find(|k| !taken.contains(k))
        .expect("some suffix is free")
}

/// Plans the edit: `files` are the project's compose files in order, as (path as labelled,
/// local path, contents). The last file whose `service` mounts something at `target` holds the
/// reference; it is pointed at a new key, declared in the same file. `new_key` picks the name
/// given the keys already declared anywhere.
pub fn plan_edit(
    files: &[(PathBuf, PathBuf, String)],
    service: &str,
    target: &str,
    new_key: impl Fn(&str, &[String]) -> String,
) -> Result<Edit, String> {
    let mut found = None;
    let mut taken = Vec::new();
    for (i, (file, _, text)) in files.iter().enumerate() {
        let doc: Value = serde_yaml::from_str(text)
            .map_err(|e| format!("{} is not valid YAML: {e}", file.display()))?;
        taken.extend(declared(&doc));
        let Some(list) = doc
            .get("services")
            .and_then(|s| s.get(service))
            .and_then(|s| s.get("volumes"))
            .and_then(Value::as_sequence)
        else {
            continue;
        };
        for (index, entry) in list.iter().enumerate() {
            if let Some((key, form)) = entry_for(entry, target) {
                found = Some((i, index, key, form));
            }
        }
    }
    let names = || {
        files
            .iter()
            .map(|f| f.0.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (i, index, old_key, form) = found.ok_or_else(|| {
        format!(
            "no `volumes:` entry of service {service} mounts {target} in {}: the data directory must be a named volume to restore into a new one (or use --in-place)",
            names()
        )
    })?;
    if !is_named_volume(&old_key) {
        return Err(format!(
            "service {service} mounts {target} from {old_key:?}, not a named volume: a physical restore switches named volumes only (or use --in-place)"
        ));
    }
    let new_key = new_key(&old_key, &taken);
    let (file, local, text) = &files[i];
    let after = rewrite(text, service, index, &old_key, &new_key, &form)
        .map_err(|e| format!("cannot edit {}: {e}", file.display()))?;
    Ok(Edit {
        file: file.clone(),
        local: local.clone(),
        service: service.to_string(),
        index,
        old_key,
        new_key,
        before: text.clone(),
        after,
    })
}

fn rewrite(
    text: &str,
    service: &str,
    index: usize,
    old_key: &str,
    new_key: &str,
    form: &Form,
) -> Result<String, String> {
    let doc = Document::new(text.to_string()).map_err(|e| e.to_string())?;
    let entry = route!("services", service, "volumes", index);
    let reference = match form {
        Form::Short => Patch {
            route: entry,
            operation: Op::RewriteFragment {
                from: subfeature::Subfeature::new(0, old_key),
                to: new_key.to_string().into(),
            },
        },
        Form::Long => Patch {
            route: entry.with_key("source"),
            operation: Op::Replace(Value::String(new_key.into())),
        },
    };
    let parsed: Value = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
    let declaration = if parsed.get("volumes").is_some_and(Value::is_mapping) {
        Patch {
            route: route!("volumes"),
            operation: Op::Add {
                key: new_key.to_string(),
                value: Value::Null,
            },
        }
    } else {
        let mut m = serde_yaml::Mapping::new();
        m.insert(Value::String(new_key.into()), Value::Null);
        Patch {
            route: route!(),
            operation: Op::Add {
                key: "volumes".into(),
                value: Value::Mapping(m),
            },
        }
    };
    let out = yamlpatch::apply_yaml_patches(&doc, &[reference, declaration])
        .map_err(|e| e.to_string())?
        .source()
        .to_string();
    // What we wrote must say what we meant.
    let check: Value = serde_yaml::from_str(&out).map_err(|e| e.to_string())?;
    let entry = check
        .get("services")
        .and_then(|s| s.get(service))
        .and_then(|s| s.get("volumes"))
        .and_then(|v| v.get(index));
    let ok = entry.is_some_and(|e| match e {
        Value::String(s) => s.split(':').next() == Some(new_key),
        Value::Mapping(_) => e.get("source").and_then(Value::as_str) == Some(new_key),
        _ => false,
    }) && declared(&check).iter().any(|k| k == new_key);
    if !ok {
        return Err("the edited file does not reference the new volume as intended".into());
    }
    Ok(out)
}

/// Where `path` (a host path from the compose labels) is readable here: the same path when it
/// exists, else through one of `mounts` (host source → path here) that contains it.
pub fn local_path(
    path: &Path,
    mounts: &[(PathBuf, PathBuf)],
    exists: impl Fn(&Path) -> bool,
) -> Option<PathBuf> {
    if exists(path) {
        return Some(path.to_path_buf());
    }
    mounts
        .iter()
        .filter_map(|(source, dest)| Some(dest.join(path.strip_prefix(source).ok()?)))
        .find(|p| exists(p))
}

/// Writes the edit: the previous file is kept as `.bak`, the new one replaces it by rename
/// (never half-written), with the original's owner and mode.
pub fn write(edit: &Edit) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;
    let current = std::fs::read_to_string(&edit.local)?;
    if current != edit.before {
        return Err(std::io::Error::other(format!(
            "{} changed since the restore was planned; not overwriting it",
            edit.file.display()
        )));
    }
    let meta = std::fs::metadata(&edit.local)?;
    let dir = edit.local.parent().unwrap_or(Path::new("."));
    let name = edit
        .local
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.pgbackup-tmp"));
    let bak = edit.backup_path();
    let result = (|| {
        std::fs::copy(&edit.local, &bak)?;
        let _ = std::os::unix::fs::chown(&bak, Some(meta.uid()), Some(meta.gid()));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(edit.after.as_bytes())?;
        f.sync_all()?;
        std::fs::set_permissions(&tmp, meta.permissions())?;
        let _ = std::os::unix::fs::chown(&tmp, Some(meta.uid()), Some(meta.gid()));
        std::fs::rename(&tmp, &edit.local)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Puts the file back as it was before [`write`].
pub fn revert(edit: &Edit) -> std::io::Result<()> {
    let bak = edit.backup_path();
    std::fs::rename(&bak, &edit.local)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STACK: &str = "# My stack
name: shop
services:
  # the database
  db:
    image: postgres:17   # pinned
    volumes:
      - db-data:/var/lib/postgresql/data   # keep me
      - ./init:/docker-entrypoint-initdb.d:ro
  app:
    image: shop
    volumes:
      - db-data:/backup:ro

volumes:
  # all data lives here
  db-data:
  other: {}
";

    fn files(texts: &[&str]) -> Vec<(PathBuf, PathBuf, String)> {
        texts
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let p = PathBuf::from(format!("/srv/shop/compose{i}.yaml"));
                (p.clone(), p, t.to_string())
            })
            .collect()
    }

    fn key(old: &str, taken: &[String]) -> String {
        restored_key(old, "20261121t101500z", taken)
    }

    fn changed_lines(e: &Edit) -> (Vec<String>, Vec<String>) {
        let old: Vec<&str> = e.before.lines().collect();
        let new: Vec<&str> = e.after.lines().collect();
        (
            old.iter()
                .filter(|l| !new.contains(l))
                .map(|l| l.to_string())
                .collect(),
            new.iter()
                .filter(|l| !old.contains(l))
                .map(|l| l.to_string())
                .collect(),
        )
    }

    #[test]
    fn short_form_only_the_reference_changes() {
        let e = plan_edit(&files(&[STACK]), "db", "/var/lib/postgresql/data", key).unwrap();
        assert_eq!(e.old_key, "db-data");
        assert_eq!(e.new_key, "db-data-restored-20261121t101500z");
        let (removed, added) = changed_lines(&e);
        assert_eq!(
            removed,
            vec!["      - db-data:/var/lib/postgresql/data   # keep me"]
        );
        assert_eq!(
            added,
            vec![
                "      - db-data-restored-20261121t101500z:/var/lib/postgresql/data   # keep me",
                "  db-data-restored-20261121t101500z: null",
            ]
        );
        // Everything else, comments included, is byte for byte the same.
        assert!(e.after.starts_with("# My stack\n"));
        assert!(e.after.contains("  # all data lives here\n  db-data:\n"));
        assert!(
            e.after.contains("      - db-data:/backup:ro"),
            "other services untouched"
        );
    }

    #[test]
    fn long_form_and_trailing_slash() {
        let text = "services:
  db:
    volumes:
      - type: volume
        source: pgdata # data
        target: /var/lib/postgresql/data/
volumes:
  pgdata:
    driver: local
";
        let e = plan_edit(&files(&[text]), "db", "/var/lib/postgresql/data", key).unwrap();
        let (removed, added) = changed_lines(&e);
        assert_eq!(removed, vec!["        source: pgdata # data"]);
        assert_eq!(
            added,
            vec![
                "        source: pgdata-restored-20261121t101500z # data",
                "  pgdata-restored-20261121t101500z: null"
            ]
        );
    }

    #[test]
    fn last_file_that_mounts_the_target_wins_and_keys_stay_unique() {
        let base = "services:\n  db:\n    volumes:\n      - a:/var/lib/postgresql/data\nvolumes:\n  a:\n  b-restored-20261121t101500z:\n";
        let overlay = "services:\n  db:\n    volumes:\n      - b-restored-20261121t101500z:/var/lib/postgresql/data\n";
        let e = plan_edit(
            &files(&[base, overlay]),
            "db",
            "/var/lib/postgresql/data",
            key,
        )
        .unwrap();
        assert_eq!(e.file, PathBuf::from("/srv/shop/compose1.yaml"));
        assert_eq!(e.old_key, "b-restored-20261121t101500z");
        // Restoring a restored volume again: same base, next free suffix.
        assert_eq!(e.new_key, "b-restored-20261121t101500z-2");
        // The overlay had no top-level volumes: one is added.
        assert!(
            e.after
                .contains("volumes:\n  b-restored-20261121t101500z-2: null"),
            "{}",
            e.after
        );
    }

    #[test]
    fn refusals_name_the_problem() {
        let bind = "services:\n  db:\n    volumes:\n      - ./data:/var/lib/postgresql/data\n";
        let e = plan_edit(&files(&[bind]), "db", "/var/lib/postgresql/data", key).unwrap_err();
        assert!(
            e.contains("not a named volume") && e.contains("./data"),
            "{e}"
        );
        let none = "services:\n  db:\n    image: postgres\n";
        let e = plan_edit(&files(&[none]), "db", "/var/lib/postgresql/data", key).unwrap_err();
        assert!(
            e.contains("no `volumes:` entry") && e.contains("compose0.yaml"),
            "{e}"
        );
        let e = plan_edit(&files(&["services: [oops"]), "db", "/x", key).unwrap_err();
        assert!(e.contains("not valid YAML"), "{e}");
    }

    #[test]
    fn local_paths_through_mounts() {
        let mounts = vec![
            (PathBuf::from("/home/u/shop"), PathBuf::from("/project")),
            (
                PathBuf::from("/var/run/docker.sock"),
                PathBuf::from("/var/run/docker.sock"),
            ),
        ];
        let here = |p: &Path| p == Path::new("/project/compose.yaml");
        assert_eq!(
            local_path(Path::new("/home/u/shop/compose.yaml"), &mounts, here),
            Some(PathBuf::from("/project/compose.yaml"))
        );
        let same = |p: &Path| p == Path::new("/home/u/shop/compose.yaml");
        assert_eq!(
            local_path(Path::new("/home/u/shop/compose.yaml"), &mounts, same),
            Some(PathBuf::from("/home/u/shop/compose.yaml"))
        );
        assert_eq!(
            local_path(Path::new("/elsewhere/c.yaml"), &mounts, here),
            None
        );
    }

    #[test]
    fn write_is_atomic_with_bak_and_revert() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("compose.yaml");
        std::fs::write(&path, STACK).unwrap();
        let mut e = plan_edit(
            &[(path.clone(), path.clone(), STACK.to_string())],
            "db",
            "/var/lib/postgresql/data",
            key,
        )
        .unwrap();
        write(&e).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), e.after);
        assert_eq!(std::fs::read_to_string(e.backup_path()).unwrap(), STACK);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(leftovers.len(), 2, "{leftovers:?}");
        revert(&e).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), STACK);
        // A file changed behind our back is not overwritten.
        std::fs::write(&path, "services: {}\n").unwrap();
        e.before = STACK.into();
        assert!(write(&e).unwrap_err().to_string().contains("changed since"));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "services: {}\n");
    }
}
