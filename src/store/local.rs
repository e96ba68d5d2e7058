//! A directory as the store (`PGBACKUP_DESTINATION=/backups`, a volume or bind mount in the
//! sidecar). Key `a/b/c` is the file `<root>/a/b/c`. Every write goes to a temporary file next
//! to its final name, is flushed to disk (`fsync`), then renamed over it and the directory
//! synced, so a file under its final name is always whole, as an S3 object is. A writer killed
//! half-way leaves only its temporary file, which listings skip and `uploads` reports (prune
//! removes it once it is old, as it aborts a stale S3 multipart upload).

use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::io::{AsyncWriteExt, BufWriter};

use super::{BoxRead, ObjectInfo, OpenUpload, Store, StoreError, UploadError};

/// Temporary files are `<name>` + this + a random tag.
const TEMP_MARK: &str = ".pgbackup-tmp-";

#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub fn new(root: PathBuf) -> LocalStore {
        LocalStore { root }
    }

    /// The file of `key`. Keys come from our own layout, but one naming `..` or an absolute
    /// path would leave the root, so they are refused.
    fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        let rel = Path::new(key);
        if key.is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(StoreError::Local {
                op: "resolve",
                path: key.to_string(),
                reason: "not a plain relative key (empty, absolute or with . or ..)".into(),
            });
        }
        Ok(self.root.join(rel))
    }

    fn err(&self, op: &'static str, path: &Path, e: std::io::Error) -> StoreError {
        local_error(op, path, e)
    }

    /// A new temporary file next to `path`, and its name.
    async fn create_temp(&self, path: &Path) -> Result<(tokio::fs::File, PathBuf), StoreError> {
        let dir = path.parent().unwrap_or(&self.root);
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| self.err("create directory", dir, e))?;
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let tmp = dir.join(format!("{name}{TEMP_MARK}{:08x}", rand_u32()));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .await
            .map_err(|e| self.err("create", &tmp, e))?;
        Ok((file, tmp))
    }

    /// Makes `tmp` the file `path`: fsync, rename, fsync the directory.
    async fn commit(
        &self,
        file: tokio::fs::File,
        tmp: &Path,
        path: &Path,
    ) -> Result<(), StoreError> {
        file.sync_all()
            .await
            .map_err(|e| self.err("sync", tmp, e))?;
        drop(file);
        tokio::fs::rename(tmp, path)
            .await
            .map_err(|e| self.err("rename", tmp, e))?;
        if let Some(dir) = path.parent() {
            sync_dir(dir).await.map_err(|e| self.err("sync", dir, e))?;
        }
        Ok(())
    }

    /// Every file under the root's part of `prefix` (blocking walk on the blocking pool).
    async fn walk(&self, prefix: &str) -> Result<Vec<(String, std::fs::Metadata)>, StoreError> {
        let start = match prefix.rsplit_once('/') {
            Some((dir, _)) => self.path(dir)?,
            None => self.root.clone(),
        };
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            walk_dir(&root, &start, &mut out)?;
            Ok(out)
        })
        .await
        .map_err(|e| StoreError::Local {
            op: "list",
            path: self.root.display().to_string(),
            reason: e.to_string(),
        })?
    }
}

fn walk_dir(
    root: &Path,
    dir: &Path,
    out: &mut Vec<(String, std::fs::Metadata)>,
) -> Result<(), StoreError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(local_error("list", dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| local_error("list", dir, e))?;
        let path = entry.path();
        let meta = entry
            .metadata()
            .map_err(|e| local_error("stat", &path, e))?;
        if meta.is_dir() {
            walk_dir(root, &path, out)?;
        } else if meta.is_file()
            && let Ok(rel) = path.strip_prefix(root)
        {
            let key = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            out.push((key, meta));
        }
    }
    Ok(())
}

fn local_error(op: &'static str, path: &Path, e: std::io::Error) -> StoreError {
    let path = path.display().to_string();
    match e.kind() {
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded => StoreError::NoSpace {
            endpoint: path,
            reason: e.to_string(),
        },
        ErrorKind::NotFound => StoreError::NotFound { op, location: path },
        ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem => StoreError::Local {
            op,
            path,
            reason: format!(
                "{e}; the sidecar's user must be able to write PGBACKUP_DESTINATION (check the mount is not read-only and its owner)"
            ),
        },
        _ => StoreError::Local {
            op,
            path,
            reason: e.to_string(),
        },
    }
}

async fn sync_dir(dir: &Path) -> std::io::Result<()> {
    tokio::fs::File::open(dir).await?.sync_all().await
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).expect("the OS random source works");
    u32::from_le_bytes(b)
}

fn modified(meta: &std::fs::Metadata) -> Option<DateTime<Utc>> {
    meta.modified().ok().map(DateTime::<Utc>::from)
}

/// Removes the temporary file, and the folders it alone needed, if the write does not reach
/// its rename (failure, or the future dropped by a timeout or shutdown).
struct TempGuard<'a> {
    tmp: Option<PathBuf>,
    root: &'a Path,
}

impl Drop for TempGuard<'_> {
    fn drop(&mut self) {
        let Some(p) = self.tmp.take() else { return };
        let _ = std::fs::remove_file(&p);
        remove_empty_parents(&p, self.root);
    }
}

/// Removes the now empty directories above `path`, up to the root (S3 has no folders: an empty
/// one must not look like a backup). Cheap: a few `rmdir`s that fail at the first non-empty one.
fn remove_empty_parents(path: &Path, root: &Path) {
    let mut dir = path.parent();
    while let Some(d) = dir.filter(|d| *d != root && d.starts_with(root)) {
        if std::fs::remove_dir(d).is_err() {
            break; // not empty, or gone
        }
        dir = d.parent();
    }
}

#[async_trait]
impl Store for LocalStore {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn prefix(&self) -> &str {
        ""
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        let path = self.path(key)?;
        let (mut file, tmp) = self.create_temp(&path).await?;
        let mut guard = TempGuard {
            tmp: Some(tmp.clone()),
            root: &self.root,
        };
        file.write_all(&data)
            .await
            .map_err(|e| self.err("write", &tmp, e))?;
        self.commit(file, &tmp, &path).await?;
        guard.tmp = None;
        Ok(())
    }

    async fn upload(&self, key: &str, mut reader: BoxRead<'_>) -> Result<u64, UploadError> {
        let path = self.path(key)?;
        let (file, tmp) = self.create_temp(&path).await?;
        let mut guard = TempGuard {
            tmp: Some(tmp.clone()),
            root: &self.root,
        };
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let n = copy(&mut reader, &mut out).await.map_err(|e| match e {
            Copy::Read(e) => UploadError::Read(e),
            Copy::Write(e) => UploadError::Store(self.err("write", &tmp, e)),
        })?;
        out.flush().await.map_err(|e| self.err("write", &tmp, e))?;
        self.commit(out.into_inner(), &tmp, &path).await?;
        guard.tmp = None;
        Ok(n)
    }

    async fn get(&self, key: &str) -> Result<(u64, BoxRead<'static>), StoreError> {
        let path = self.path(key)?;
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| self.err("open", &path, e))?;
        let size = file
            .metadata()
            .await
            .map_err(|e| self.err("stat", &path, e))?
            .len();
        Ok((size, Box::new(file)))
    }

    async fn head(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let path = self.path(key)?;
        match tokio::fs::metadata(&path).await {
            Ok(m) if m.is_file() => Ok(Some(m.len())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.err("stat", &path, e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let mut out: Vec<ObjectInfo> = self
            .walk(prefix)
            .await?
            .into_iter()
            .filter(|(key, _)| key.starts_with(prefix) && !key.contains(TEMP_MARK))
            .map(|(key, meta)| ObjectInfo {
                key,
                size: meta.len(),
                modified: modified(&meta),
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn folders(&self, dir: &str) -> Result<Vec<String>, StoreError> {
        let mut names = Vec::new();
        for (key, _) in self.walk(&super::folder(dir)).await? {
            if key.contains(TEMP_MARK) {
                continue;
            }
            let rest = key.strip_prefix(&super::folder(dir)).unwrap_or(&key);
            if let Some((first, _)) = rest.split_once('/')
                && !names.iter().any(|n| n == first)
            {
                names.push(first.to_string());
            }
        }
        names.sort();
        Ok(names)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(self.err("delete", &path, e)),
        }
        remove_empty_parents(&path, &self.root);
        Ok(())
    }

    async fn uploads(&self, prefix: &str) -> Result<Vec<OpenUpload>, StoreError> {
        Ok(self
            .walk(prefix)
            .await?
            .into_iter()
            .filter_map(|(key, meta)| {
                let (name, _) = key.split_once(TEMP_MARK)?;
                let upload_id = key.rsplit('/').next()?.to_string();
                name.starts_with(prefix).then(|| OpenUpload {
                    key: name.to_string(),
                    upload_id,
                    initiated: modified(&meta),
                })
            })
            .collect())
    }

    async fn abort(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        if !upload_id.contains(TEMP_MARK) || upload_id.contains('/') {
            return Err(StoreError::Local {
                op: "abort",
                path: upload_id.to_string(),
                reason: "not a temporary file of pgbackup's".into(),
            });
        }
        let path = self.path(key)?;
        let tmp = path.with_file_name(upload_id);
        match tokio::fs::remove_file(&tmp).await {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(self.err("delete", &tmp, e)),
        }
        remove_empty_parents(&tmp, &self.root);
        Ok(())
    }

    async fn probe(&self, _patience: Duration) -> Result<(), StoreError> {
        let meta = tokio::fs::metadata(&self.root).await.map_err(|e| StoreError::Local {
            op: "open",
            path: self.root.display().to_string(),
            reason: format!(
                "{e}: PGBACKUP_DESTINATION must be a directory mounted into the sidecar (a volume or bind mount)"
            ),
        })?;
        if !meta.is_dir() {
            return Err(StoreError::Local {
                op: "open",
                path: self.root.display().to_string(),
                reason: "not a directory: PGBACKUP_DESTINATION must name a directory".into(),
            });
        }
        // Writable: what a backup will need first.
        let probe = self
            .root
            .join(format!(".pgbackup-probe{TEMP_MARK}{:08x}", rand_u32()));
        tokio::fs::write(&probe, b"")
            .await
            .map_err(|e| self.err("write", &probe, e))?;
        let _ = tokio::fs::remove_file(&probe).await;
        Ok(())
    }
}

enum Copy {
    Read(std::io::Error),
    Write(std::io::Error),
}

/// Copies `reader` into `out`, telling a read failure (the dump) from a write failure (the disk).
async fn copy(
    reader: &mut BoxRead<'_>,
    out: &mut (impl tokio::io::AsyncWrite + Unpin),
) -> Result<u64, Copy> {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    loop {
        let got = reader.read(&mut buf).await.map_err(Copy::Read)?;
        if got == 0 {
            return Ok(n);
        }
        out.write_all(&buf[..got]).await.map_err(Copy::Write)?;
        n += got as u64;
    }
}
