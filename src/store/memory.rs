//! An in-memory store for unit tests of the stages above storage (runner, prune, restore
//! resolution). It keeps S3's contract: an object is absent or whole, listings are sorted, a
//! dropped upload leaves nothing. Faults can be injected per operation.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::io::AsyncReadExt;

use super::{BoxRead, ObjectInfo, OpenUpload, Store, StoreError, UploadError};

#[derive(Default)]
pub struct MemoryStore {
    objects: Mutex<BTreeMap<String, (Bytes, DateTime<Utc>)>>,
    open: Mutex<Vec<OpenUpload>>,
    /// Writes of keys containing one of these fail with `NoSpace`.
    pub fail_writes: Mutex<Vec<String>>,
    /// Writes before the next failure: `Some(0)` fails every write from now on.
    pub writes_left: Mutex<Option<usize>>,
    /// Deletes before the store stops answering them: `Some(0)` fails every delete.
    pub fail_deletes_after: Mutex<Option<usize>>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Every key, sorted.
    pub fn keys(&self) -> Vec<String> {
        self.objects.lock().unwrap().keys().cloned().collect()
    }

    /// Plants an object written at `when` (a listing shows that time).
    pub fn insert_at(&self, key: &str, data: &[u8], when: DateTime<Utc>) {
        self.objects
            .lock()
            .unwrap()
            .insert(key.to_string(), (Bytes::copy_from_slice(data), when));
    }

    /// Plants an open upload, as a killed writer leaves one.
    pub fn insert_upload(&self, key: &str, upload_id: &str, when: DateTime<Utc>) {
        self.open.lock().unwrap().push(OpenUpload {
            key: key.to_string(),
            upload_id: upload_id.to_string(),
            initiated: Some(when),
        });
    }

    pub fn object(&self, key: &str) -> Option<Bytes> {
        self.objects
            .lock()
            .unwrap()
            .get(key)
            .map(|(b, _)| b.clone())
    }

    fn check_write(&self, key: &str) -> Result<(), StoreError> {
        let refuse = || StoreError::NoSpace {
            endpoint: "memory".into(),
            reason: format!("injected fault writing {key}"),
        };
        if self
            .fail_writes
            .lock()
            .unwrap()
            .iter()
            .any(|k| key.contains(k.as_str()))
        {
            return Err(refuse());
        }
        let mut left = self.writes_left.lock().unwrap();
        match left.as_mut() {
            Some(0) => Err(refuse()),
            Some(n) => {
                *n -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn location(&self) -> String {
        "memory".into()
    }

    fn prefix(&self) -> &str {
        ""
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        self.check_write(key)?;
        self.objects
            .lock()
            .unwrap()
            .insert(key.to_string(), (data, Utc::now()));
        Ok(())
    }

    async fn upload(&self, key: &str, mut reader: BoxRead<'_>) -> Result<u64, UploadError> {
        let mut buf = Vec::new();
        reader
            .read_to_end(&mut buf)
            .await
            .map_err(UploadError::Read)?;
        let n = buf.len() as u64;
        self.put(key, Bytes::from(buf)).await?;
        Ok(n)
    }

    async fn get(&self, key: &str) -> Result<(u64, BoxRead<'static>), StoreError> {
        let data = self.object(key).ok_or_else(|| StoreError::NotFound {
            op: "get",
            location: format!("memory:{key}"),
        })?;
        Ok((data.len() as u64, Box::new(std::io::Cursor::new(data))))
    }

    async fn head(&self, key: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.object(key).map(|b| b.len() as u64))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        Ok(self
            .objects
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, (b, t))| ObjectInfo {
                key: k.clone(),
                size: b.len() as u64,
                modified: Some(*t),
            })
            .collect())
    }

    async fn folders(&self, dir: &str) -> Result<Vec<String>, StoreError> {
        let root = super::folder(dir);
        let mut names: Vec<String> = self
            .keys()
            .iter()
            .filter_map(|k| Some(k.strip_prefix(&root)?.split_once('/')?.0.to_string()))
            .collect();
        names.dedup();
        Ok(names)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        if let Some(n) = self.fail_deletes_after.lock().unwrap().as_mut() {
            if *n == 0 {
                return Err(StoreError::Unreachable {
                    endpoint: "memory".into(),
                    reason: format!("injected fault deleting {key}"),
                });
            }
            *n -= 1;
        }
        self.objects.lock().unwrap().remove(key);
        Ok(())
    }

    async fn uploads(&self, prefix: &str) -> Result<Vec<OpenUpload>, StoreError> {
        Ok(self
            .open
            .lock()
            .unwrap()
            .iter()
            .filter(|u| u.key.starts_with(prefix))
            .cloned()
            .collect())
    }

    async fn abort(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        self.open
            .lock()
            .unwrap()
            .retain(|u| !(u.key == key && u.upload_id == upload_id));
        Ok(())
    }

    async fn probe(&self, _patience: Duration) -> Result<(), StoreError> {
        Ok(())
    }
}
