//! One contract, checked on the local and in-memory stores alike (the S3 store is checked
//! against Garage by the end-to-end tests).

use std::sync::Arc;

use bytes::Bytes;
use tokio::io::AsyncReadExt;

use super::local::LocalStore;
use super::memory::MemoryStore;
use super::*;

async fn read_all(store: &dyn Store, key: &str) -> Vec<u8> {
    let (size, mut body) = store.get(key).await.unwrap();
    let mut buf = Vec::new();
    body.read_to_end(&mut buf).await.unwrap();
    assert_eq!(size, buf.len() as u64);
    buf
}

async fn contract(store: &dyn Store) {
    store
        .put("p/a/1/x", Bytes::from_static(b"one"))
        .await
        .unwrap();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let n = store
        .upload("p/a/1/big", Box::new(std::io::Cursor::new(big.clone())))
        .await
        .unwrap();
    assert_eq!(n, big.len() as u64);
    store
        .put("p/a/2/y", Bytes::from_static(b"two"))
        .await
        .unwrap();
    store.put("p/ab/3/z", Bytes::new()).await.unwrap();

    assert_eq!(read_all(store, "p/a/1/x").await, b"one");
    assert_eq!(read_all(store, "p/a/1/big").await, big);
    assert_eq!(store.head("p/a/2/y").await.unwrap(), Some(3));
    assert_eq!(store.head("p/a/2/nothing").await.unwrap(), None);
    assert!(matches!(
        store.get("p/a/9/none").await.err(),
        Some(StoreError::NotFound { .. })
    ));

    let keys: Vec<String> = store
        .list("p/a/")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(keys, ["p/a/1/big", "p/a/1/x", "p/a/2/y"]);
    assert_eq!(store.folders("p/a").await.unwrap(), ["1", "2"]);
    assert_eq!(store.folders("p").await.unwrap(), ["a", "ab"]);

    store.delete("p/a/2/y").await.unwrap();
    store.delete("p/a/2/y").await.unwrap(); // a missing key is no error
    assert_eq!(store.folders("p/a").await.unwrap(), ["1"]);
    assert!(store.uploads("p/").await.unwrap().is_empty());
}

#[tokio::test]
async fn memory_store_keeps_the_contract() {
    contract(&MemoryStore::new()).await;
}

#[tokio::test]
async fn local_store_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::new(dir.path().to_path_buf());
    store
        .probe(std::time::Duration::from_secs(1))
        .await
        .unwrap();
    contract(&store).await;
    // Deleting the last file of a folder removes the folder: no empty "backup" is left.
    assert!(!dir.path().join("p/a/2").exists());
}

/// A reader that yields some bytes, then fails: a dump that dies half-way.
struct Failing(usize);

impl tokio::io::AsyncRead for Failing {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.0 == 0 {
            return std::task::Poll::Ready(Err(std::io::Error::other("dump died")));
        }
        let n = self.0.min(buf.remaining()).min(4096);
        buf.put_slice(&vec![1u8; n]);
        self.0 -= n;
        std::task::Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn a_failed_local_write_leaves_nothing_under_any_name() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::new(dir.path().to_path_buf());
    let err = store.upload("t/1/dump", Box::new(Failing(100_000))).await;
    assert!(matches!(err, Err(UploadError::Read(_))), "{err:?}");
    assert!(store.list("").await.unwrap().is_empty());
    assert!(store.uploads("").await.unwrap().is_empty());
    assert!(!dir.path().join("t/1").exists());
}

#[tokio::test]
async fn a_killed_local_writer_leaves_an_upload_that_abort_removes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LocalStore::new(dir.path().to_path_buf()));
    // What a SIGKILL leaves: the temporary file, never renamed.
    std::fs::create_dir_all(dir.path().join("t/1")).unwrap();
    std::fs::write(dir.path().join("t/1/dump.pgbackup-tmp-0000abcd"), b"half").unwrap();
    assert!(store.list("t/").await.unwrap().is_empty(), "not listed");
    assert!(store.folders("t").await.unwrap().is_empty(), "no folder");
    let open = store.uploads("t/").await.unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].key, "t/1/dump");
    store.abort(&open[0].key, &open[0].upload_id).await.unwrap();
    assert!(store.uploads("t/").await.unwrap().is_empty());
    assert!(!dir.path().join("t").exists());
    // Only pgbackup's own temporary files may be removed that way.
    assert!(store.abort("t/1/dump", "../../etc").await.is_err());
}

#[tokio::test]
async fn local_keys_cannot_leave_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::new(dir.path().join("root"));
    for key in ["../x", "/etc/passwd", "a/../../x", ""] {
        assert!(store.put(key, Bytes::new()).await.is_err(), "{key}");
    }
}

#[tokio::test]
async fn probe_names_a_missing_destination() {
    let store = LocalStore::new("/nonexistent/backups".into());
    let e = store
        .probe(std::time::Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("/nonexistent/backups"), "{e}");
    assert!(e.to_string().contains("PGBACKUP_DESTINATION"), "{e}");
}

#[tokio::test]
async fn small_reads_refuse_oversized_objects() {
    let store = MemoryStore::new();
    store.put("m", Bytes::from(vec![0u8; 100])).await.unwrap();
    assert_eq!(
        read_small(&store, "m", 100, "manifest")
            .await
            .unwrap()
            .len(),
        100
    );
    let e = read_small(&store, "m", 99, "manifest").await.unwrap_err();
    assert!(e.contains("100 bytes"), "{e}");
}
