//! The filesystem API of the shell over the in-memory and local backends:
//! what a user does through the mount, without FUSE in between.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
#![allow(clippy::arithmetic_side_effects)]

use blobcache::storage::local::LocalStore;
use blobcache::storage::memory::MemoryStore;
use blobcache::storage::{
    BlobProperties, BlobStore, BlockId, CommittedBlock, Condition, ETag, Listing, StorageError, StorageResult,
};
use blobcache::{BlobFs, CacheOptions, FileKind, FsError, OpenOptions};
use std::sync::Arc;

fn options(block_size: u64, buffers: u64) -> CacheOptions {
    CacheOptions {
        block_size,
        memory_bytes: block_size * buffers,
        prefetch_blocks: 2,
        parallelism: 4,
        ..CacheOptions::default()
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u8)
                .wrapping_mul(13)
                .wrapping_add(seed)
                .wrapping_add((i >> 10) as u8)
        })
        .collect()
}

async fn write_file(fs: &BlobFs, path: &str, data: &[u8], chunk: usize) {
    let (handle, _) = fs.create(path, false).await.unwrap();
    for (i, piece) in data.chunks(chunk).enumerate() {
        let written = fs.write(handle, (i * chunk) as u64, piece.to_vec()).await.unwrap();
        assert_eq!(written as usize, piece.len());
    }
    fs.flush(handle).await.unwrap();
    fs.release(handle).await.unwrap();
}

async fn read_file(fs: &BlobFs, path: &str) -> Vec<u8> {
    let handle = fs
        .open(
            path,
            OpenOptions {
                read: true,
                ..OpenOptions::default()
            },
        )
        .await
        .unwrap();
    let mut out = Vec::new();
    loop {
        let chunk = fs.read(handle, out.len() as u64, 128 * 1024).await.unwrap();
        if chunk.is_empty() {
            break;
        }
        out.extend_from_slice(&chunk);
    }
    fs.release(handle).await.unwrap();
    out
}

async fn round_trip(store: Arc<dyn BlobStore>) {
    let fs = BlobFs::new(store.clone(), options(64 * 1024, 4)).unwrap();
    let sizes = [0usize, 1, 65535, 65536, 65537, 1_000_000];
    for (i, size) in sizes.iter().enumerate() {
        let data = pattern(*size, i as u8);
        write_file(&fs, &format!("dir/f{i}"), &data, 50_000).await;
        assert_eq!(read_file(&fs, &format!("dir/f{i}")).await, data, "size {size}");
    }
    let names: Vec<String> = fs.readdir("dir").await.unwrap().into_iter().map(|e| e.name).collect();
    assert_eq!(names, vec!["f0", "f1", "f2", "f3", "f4", "f5"]);
    assert_eq!(fs.getattr("dir").await.unwrap().kind, FileKind::Directory);
    assert_eq!(fs.getattr("dir/f5").await.unwrap().size, 1_000_000);

    // Layout: every block but the last is exactly the block size.
    let blocks = store.get_block_list("dir/f5").await.unwrap();
    assert_eq!(blocks.len(), 16);
    assert!(blocks[..15].iter().all(|b| b.size == 65536));
    assert!(blocks.iter().all(|b| b.id.0.len() == blocks[0].id.0.len()));

    // A second mount over the same container sees everything.
    let other = BlobFs::new(store.clone(), options(64 * 1024, 2)).unwrap();
    assert_eq!(read_file(&other, "dir/f5").await, pattern(1_000_000, 5));

    fs.rename("dir/f5", "dir/moved").await.unwrap();
    assert!(matches!(fs.getattr("dir/f5").await, Err(FsError::NotFound(_))));
    assert_eq!(read_file(&fs, "dir/moved").await, pattern(1_000_000, 5));

    fs.mkdir("empty").await.unwrap();
    assert_eq!(fs.getattr("empty").await.unwrap().kind, FileKind::Directory);
    assert!(fs.readdir("empty").await.unwrap().is_empty());
    fs.rename("dir", "renamed").await.unwrap();
    assert_eq!(read_file(&fs, "renamed/moved").await, pattern(1_000_000, 5));
    assert!(matches!(fs.rmdir("renamed").await, Err(FsError::NotEmpty(_))));
    fs.rmdir("empty").await.unwrap();

    fs.unlink("renamed/moved").await.unwrap();
    assert!(matches!(fs.getattr("renamed/moved").await, Err(FsError::NotFound(_))));

    // Truncate by path, shrink then grow.
    fs.truncate("renamed/f4", None, 10).await.unwrap();
    let attr = fs.truncate("renamed/f4", None, 100_000).await.unwrap();
    assert_eq!(attr.size, 100_000);
    let mut expected = pattern(65537, 4)[..10].to_vec();
    expected.resize(100_000, 0);
    assert_eq!(read_file(&fs, "renamed/f4").await, expected);

    fs.shutdown().await.unwrap();
    let (_, occupancy) = fs.engine_stats();
    assert_eq!(
        (occupancy.pins, occupancy.io_pending, occupancy.open_handles),
        (0, 0, 0)
    );
}

#[tokio::test]
async fn file_operations_over_memory() {
    round_trip(Arc::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn file_operations_over_a_local_directory() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    round_trip(Arc::new(store)).await;
    // The local directory holds the files under their names.
    assert_eq!(std::fs::read(dir.path().join("renamed/f1")).unwrap(), pattern(1, 1));
}

#[tokio::test]
async fn a_large_file_through_a_small_pool() {
    let fs = BlobFs::new(Arc::new(MemoryStore::new()), options(64 * 1024, 2)).unwrap();
    let data = pattern(5_000_000, 9);
    write_file(&fs, "big", &data, 128 * 1024).await;
    assert_eq!(read_file(&fs, "big").await, data);
    let (_, occupancy) = fs.engine_stats();
    assert!(occupancy.buffers_allocated <= 2);
}

#[tokio::test]
async fn new_file_is_visible_before_its_first_commit() {
    let fs = BlobFs::new(Arc::new(MemoryStore::new()), options(4096, 4)).unwrap();
    let (handle, _) = fs.create("new", true).await.unwrap();
    fs.write(handle, 0, b"hello".to_vec()).await.unwrap();
    assert_eq!(fs.getattr("new").await.unwrap().size, 5);
    let names: Vec<String> = fs.readdir("").await.unwrap().into_iter().map(|e| e.name).collect();
    assert_eq!(names, vec!["new"]);
    assert!(matches!(fs.create("new", true).await, Err(FsError::Exists(_))));
    fs.release(handle).await.unwrap();
    fs.shutdown().await.unwrap();
}

/// Two caches over one container change the same file through handles
/// opened on the same version: the first close commits, the second must
/// fail rather than overwrite the first one's change it never saw.
async fn conflicting_writers(store: Arc<dyn BlobStore>) {
    let first = BlobFs::new(store.clone(), options(64 * 1024, 4)).unwrap();
    let second = BlobFs::new(store.clone(), options(64 * 1024, 4)).unwrap();
    write_file(&first, "f", b"base\n", 4096).await;
    let rw = OpenOptions {
        read: true,
        write: true,
        ..OpenOptions::default()
    };
    let a = first.open("f", rw).await.unwrap();
    let b = second.open("f", rw).await.unwrap();
    first.write(a, 0, b"AAAA".to_vec()).await.unwrap();
    second.write(b, 0, b"BBBB".to_vec()).await.unwrap();
    first.flush(a).await.unwrap();
    first.release(a).await.unwrap();
    let second_flush = second.flush(b).await;
    let _ = second.release(b).await;
    assert!(
        second_flush.is_err(),
        "the second commit overwrote the first: {second_flush:?}"
    );
    let reader = BlobFs::new(store, options(64 * 1024, 4)).unwrap();
    assert_eq!(read_file(&reader, "f").await, b"AAAA\n");
}

#[tokio::test]
async fn conflicting_writers_memory() {
    conflicting_writers(Arc::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn conflicting_writers_local() {
    let dir = tempfile::tempdir().unwrap();
    conflicting_writers(Arc::new(LocalStore::open(dir.path()).unwrap())).await;
}

/// A memory store whose commits take effect only after a delay, like a
/// Put Block List that is slow to answer.
struct SlowCommits {
    inner: MemoryStore,
    delay: std::time::Duration,
}

#[async_trait::async_trait]
impl BlobStore for SlowCommits {
    fn describe(&self) -> String {
        "memory with slow commits".into()
    }
    async fn get_properties(&self, name: &str) -> StorageResult<BlobProperties> {
        self.inner.get_properties(name).await
    }
    async fn get_block_list(&self, name: &str) -> StorageResult<Vec<CommittedBlock>> {
        self.inner.get_block_list(name).await
    }
    async fn read_range(&self, name: &str, offset: u64, buf: &mut [u8], condition: &Condition) -> StorageResult<usize> {
        self.inner.read_range(name, offset, buf, condition).await
    }
    async fn put_block(&self, name: &str, id: &BlockId, data: bytes::Bytes) -> StorageResult<()> {
        self.inner.put_block(name, id, data).await
    }
    async fn put_block_list(&self, name: &str, blocks: &[BlockId], condition: &Condition) -> StorageResult<ETag> {
        tokio::time::sleep(self.delay).await;
        self.inner.put_block_list(name, blocks, condition).await
    }
    async fn put_blob(
        &self,
        name: &str,
        data: bytes::Bytes,
        is_dir_marker: bool,
        condition: &Condition,
    ) -> StorageResult<ETag> {
        self.inner.put_blob(name, data, is_dir_marker, condition).await
    }
    async fn delete_blob(&self, name: &str) -> StorageResult<()> {
        self.inner.delete_blob(name).await
    }
    async fn list(&self, prefix: &str) -> StorageResult<Listing> {
        self.inner.list(prefix).await
    }
    async fn copy_blob(&self, from: &str, to: &str) -> StorageResult<ETag> {
        self.inner.copy_blob(from, to).await
    }
    async fn check_access(&self) -> StorageResult<()> {
        self.inner.check_access().await
    }
}

/// The last release of a new file commits it in the background; an unlink
/// while that commit runs must not be undone by the commit landing after
/// the delete.
#[tokio::test]
async fn unlink_during_a_background_commit_leaves_no_blob() {
    let store = Arc::new(SlowCommits {
        inner: MemoryStore::new(),
        delay: std::time::Duration::from_millis(100),
    });
    let fs = BlobFs::new(store.clone(), options(4096, 4)).unwrap();
    let (handle, _) = fs.create("n", true).await.unwrap();
    fs.release(handle).await.unwrap();
    fs.unlink("n").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        matches!(store.get_properties("n").await, Err(StorageError::NotFound(_))),
        "the commit brought the unlinked blob back"
    );
    assert!(matches!(fs.getattr("n").await, Err(FsError::NotFound(_))));
    fs.shutdown().await.unwrap();
}

/// Found by shell_ops: a rename onto the name of a new file whose commit
/// (from its last release) was in flight, then an unlink of that name: the
/// commit landed after the unlink's delete and brought the name back.
#[tokio::test]
async fn a_rename_over_a_file_being_committed_then_an_unlink_leaves_no_blob() {
    let store = Arc::new(SlowCommits {
        inner: MemoryStore::new(),
        delay: std::time::Duration::from_millis(100),
    });
    let fs = BlobFs::new(store.clone(), options(4096, 4)).unwrap();
    write_file(&fs, "source", b"moved", 5).await;
    let (handle, _) = fs.create("target", true).await.unwrap();
    fs.release(handle).await.unwrap();
    fs.rename("source", "target").await.unwrap();
    fs.unlink("target").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        matches!(store.get_properties("target").await, Err(StorageError::NotFound(_))),
        "the commit brought the unlinked blob back"
    );
    fs.shutdown().await.unwrap();
}
