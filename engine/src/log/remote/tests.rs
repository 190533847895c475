//! The part protocol over an in-memory archive; the S3 archive itself is tested against the
//! S3 emulator (tests/e2e/remote_logs.rs).

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::*;

#[derive(Default)]
struct Memory {
    objects: Mutex<BTreeMap<String, Vec<u8>>>,
}

fn failed(action: &'static str, key: &str) -> ArchiveError {
    ArchiveError {
        action,
        key: key.to_string(),
        source: "unreachable".into(),
    }
}

#[async_trait::async_trait]
impl LogArchive for Memory {
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), ArchiveError> {
        let mut objects = self.objects.lock().map_err(|_| failed("put", key))?;
        objects.insert(key.to_string(), bytes);
        Ok(())
    }
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, ArchiveError> {
        let objects = self.objects.lock().map_err(|_| failed("get", key))?;
        Ok(objects.get(key).cloned())
    }
    async fn list(&self, prefix: &str) -> Result<Vec<Archived>, ArchiveError> {
        let objects = self.objects.lock().map_err(|_| failed("list", prefix))?;
        Ok(objects
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{prefix}/")))
            .map(|(k, v)| Archived {
                key: k.clone(),
                size: v.len() as u64,
            })
            .collect())
    }
    async fn delete(&self, key: &str) -> Result<(), ArchiveError> {
        let mut objects = self.objects.lock().map_err(|_| failed("delete", key))?;
        objects.remove(key);
        Ok(())
    }
}

const KEY: &str = "dag_id=d/run_id=r/task_id=t/attempt=1.log";

fn append(path: &std::path::Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

fn shipper(archive: &Arc<Memory>, path: &std::path::Path) -> Shipper {
    Shipper {
        archive: archive.clone(),
        key: KEY.to_string(),
        path: path.to_path_buf(),
        shipped: 0,
    }
}

async fn read(archive: &Memory, offset: u64, limit: u64, ended: bool) -> Option<String> {
    read_remote(archive, KEY, offset, limit, ended)
        .await
        .unwrap()
        .map(|c| String::from_utf8(c.bytes).unwrap())
}

#[tokio::test]
async fn running_lines_go_up_in_parts_and_the_end_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("attempt=1.log");
    let archive = Arc::new(Memory::default());
    let mut s = shipper(&archive, &path);
    assert_eq!(read(&archive, 0, 1024, false).await, None);

    append(&path, "one\ntw");
    s.ship_new().await;
    // A line still being written waits for its end.
    assert_eq!(read(&archive, 0, 1024, false).await.unwrap(), "one\n");
    append(&path, "o\nthree\n");
    s.ship_new().await;
    s.ship_new().await; // nothing new: no empty part
    assert_eq!(archive.list(&parts_folder(KEY)).await.unwrap().len(), 2);
    assert_eq!(
        read(&archive, 0, 1024, false).await.unwrap(),
        "one\ntwo\nthree\n"
    );
    // Offsets are the file's: a reader picks up where its last read ended, across parts.
    assert_eq!(
        read(&archive, 4, 1024, false).await.unwrap(),
        "two\nthree\n"
    );
    assert_eq!(read(&archive, 5, 6, false).await.unwrap(), "wo\n");
    let past = read_remote(archive.as_ref(), KEY, 99, 10, false).await;
    assert!(
        matches!(
            past,
            Err(ReadError::PastEnd {
                offset: 99,
                len: 14
            })
        ),
        "{past:?}"
    );

    append(&path, "last, no newline");
    s.ship_whole().await;
    assert!(
        archive.list(&parts_folder(KEY)).await.unwrap().is_empty(),
        "parts deleted"
    );
    assert_eq!(
        read(&archive, 8, 1024, true).await.unwrap(),
        "three\nlast, no newline"
    );
}

#[tokio::test]
async fn a_gap_in_the_parts_ends_what_can_be_read() {
    let archive = Memory::default();
    archive
        .put(&part_key(KEY, 0), b"a\n".to_vec())
        .await
        .unwrap();
    // The part at 2 never went up.
    archive
        .put(&part_key(KEY, 4), b"c\n".to_vec())
        .await
        .unwrap();
    assert_eq!(read(&archive, 0, 1024, false).await.unwrap(), "a\n");
    let past = read_remote(&archive, KEY, 4, 10, false).await;
    assert!(matches!(past, Err(ReadError::PastEnd { .. })), "{past:?}");
}

#[tokio::test]
async fn shipping_copies_while_the_try_runs_and_whole_at_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("attempt=1.log");
    let archive = Arc::new(Memory::default());
    let remote = RemoteLogs {
        archive: archive.clone(),
        every: Duration::from_millis(20),
    };
    let shipping = Shipping::start(&remote, KEY.to_string(), path.clone());
    append(&path, "started\n");
    let mut seen = None;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        seen = read(&archive, 0, 1024, false).await;
        if seen.is_some() {
            break;
        }
    }
    assert_eq!(
        seen.as_deref(),
        Some("started\n"),
        "a part went up while running"
    );
    assert_eq!(archive.get(KEY).await.unwrap(), None, "not whole yet");
    append(&path, "done\n");
    shipping.finish(true).await;
    assert_eq!(archive.get(KEY).await.unwrap().unwrap(), b"started\ndone\n");
}

#[tokio::test]
async fn a_quiet_try_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let archive = Arc::new(Memory::default());
    let remote = RemoteLogs {
        archive: archive.clone(),
        every: Duration::from_millis(5),
    };
    let shipping = Shipping::start(&remote, KEY.to_string(), dir.path().join("none.log"));
    tokio::time::sleep(Duration::from_millis(30)).await;
    shipping.finish(false).await;
    assert!(archive.objects.lock().unwrap().is_empty());
}
