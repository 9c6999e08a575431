//! Behaviour specific to the local directory backend: the files are visible
//! as plain files, edits made outside show as new versions, and names that
//! the filesystem cannot hold are refused clearly.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use blobcache::storage::local::LocalStore;
use blobcache::storage::{BlobStore, BlockId, Condition, StorageError};
use bytes::Bytes;

fn id(n: u8) -> BlockId {
    BlockId(vec![b'i', n])
}

#[tokio::test]
async fn blobs_are_plain_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path().join("c")).unwrap();
    store
        .put_block("docs/a.txt", &id(0), Bytes::from_static(b"hello "))
        .await
        .unwrap();
    store
        .put_block("docs/a.txt", &id(1), Bytes::from_static(b"world"))
        .await
        .unwrap();
    store
        .put_block_list("docs/a.txt", &[id(0), id(1)], &Condition::None)
        .await
        .unwrap();
    let path = dir.path().join("c/docs/a.txt");
    assert_eq!(std::fs::read(&path).unwrap(), b"hello world");
    store
        .put_blob("docs/empty-dir", Bytes::new(), true, &Condition::None)
        .await
        .unwrap();
    assert!(dir.path().join("c/docs/empty-dir").is_dir());

    // Bookkeeping is hidden from listings and refused as a name.
    let root = store.list("").await.unwrap();
    assert_eq!(root.prefixes, ["docs/"]);
    assert!(root.blobs.is_empty());
    let refused = store
        .put_blob(".blobcache/x", Bytes::new(), false, &Condition::None)
        .await;
    assert!(matches!(refused, Err(StorageError::Invalid(_))), "{refused:?}");

    // Staged blocks are gone after the commit.
    let staged = std::fs::read_dir(dir.path().join("c/.blobcache/staged"))
        .unwrap()
        .count();
    assert_eq!(staged, 0);
}

#[tokio::test]
async fn files_added_outside_are_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    std::fs::create_dir_all(dir.path().join("x/y")).unwrap();
    std::fs::write(dir.path().join("x/y/z.bin"), b"outside").unwrap();
    let listing = store.list("x/y/").await.unwrap();
    assert_eq!(listing.blobs.len(), 1);
    assert_eq!(listing.blobs[0].name, "x/y/z.bin");
    assert_eq!(listing.blobs[0].properties.size, 7);
    assert_eq!(store.get_block_list("x/y/z.bin").await.unwrap(), vec![]);
}

#[tokio::test]
async fn outside_edit_changes_etag_and_drops_block_list() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    store.put_block("f", &id(0), Bytes::from_static(b"abc")).await.unwrap();
    let etag = store.put_block_list("f", &[id(0)], &Condition::None).await.unwrap();
    assert_eq!(store.get_block_list("f").await.unwrap().len(), 1);

    std::fs::write(dir.path().join("f"), b"edited").unwrap();
    let props = store.get_properties("f").await.unwrap();
    assert_ne!(props.etag, etag);
    assert_eq!(props.size, 6);
    assert_eq!(store.get_block_list("f").await.unwrap(), vec![]);
    let mut buf = [0u8; 6];
    let stale = store
        .read_range("f", 0, &mut buf, &Condition::IfMatch(etag.clone()))
        .await;
    assert!(matches!(stale, Err(StorageError::PreconditionFailed(_))), "{stale:?}");
    // The old committed block no longer exists.
    let reuse = store.put_block_list("f", &[id(0)], &Condition::None).await;
    assert!(matches!(reuse, Err(StorageError::Invalid(_))), "{reuse:?}");
}

#[tokio::test]
async fn block_list_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = LocalStore::open(dir.path()).unwrap();
        for n in 0..3 {
            store.put_block("r", &id(n), Bytes::from(vec![n; 10])).await.unwrap();
        }
        store
            .put_block_list("r", &[id(0), id(1), id(2)], &Condition::None)
            .await
            .unwrap();
    }
    let store = LocalStore::open(dir.path()).unwrap();
    assert_eq!(store.get_block_list("r").await.unwrap().len(), 3);
    store
        .put_block_list("r", &[id(2), id(0)], &Condition::None)
        .await
        .unwrap();
    let mut expected = vec![2u8; 10];
    expected.extend([0u8; 10]);
    assert_eq!(std::fs::read(dir.path().join("r")).unwrap(), expected);
}

#[tokio::test]
async fn file_and_directory_clashes_are_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    store
        .put_blob("a", Bytes::from_static(b"file"), false, &Condition::None)
        .await
        .unwrap();
    match store
        .put_blob("a/b", Bytes::from_static(b"x"), false, &Condition::None)
        .await
    {
        Err(StorageError::Conflict(message)) => {
            assert!(message.contains("a/b") && message.contains("a is a file"), "{message}");
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    store
        .put_blob("d/inner", Bytes::from_static(b"x"), false, &Condition::None)
        .await
        .unwrap();
    let over_dir = store
        .put_blob("d", Bytes::from_static(b"x"), false, &Condition::None)
        .await;
    assert!(matches!(over_dir, Err(StorageError::Conflict(_))), "{over_dir:?}");
    let non_empty = store.delete_blob("d").await;
    assert!(matches!(non_empty, Err(StorageError::Conflict(_))), "{non_empty:?}");
    let marker_over_file = store.put_blob("a", Bytes::new(), true, &Condition::None).await;
    assert!(
        matches!(marker_over_file, Err(StorageError::Conflict(_))),
        "{marker_over_file:?}"
    );
}

#[tokio::test]
async fn long_names_work() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    let name = format!("{}/{}", "d".repeat(200), "f".repeat(200));
    store
        .put_block(&name, &id(0), Bytes::from_static(b"long"))
        .await
        .unwrap();
    store.put_block_list(&name, &[id(0)], &Condition::None).await.unwrap();
    assert_eq!(store.get_block_list(&name).await.unwrap().len(), 1);
    assert_eq!(store.get_properties(&name).await.unwrap().size, 4);
    let too_long = "x".repeat(300);
    let refused = store.put_blob(&too_long, Bytes::new(), false, &Condition::None).await;
    assert!(matches!(refused, Err(StorageError::Invalid(_))), "{refused:?}");
}

#[test]
fn open_names_the_path_it_cannot_create() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, b"").unwrap();
    let error = LocalStore::open(file.join("sub")).unwrap_err();
    assert!(
        error.to_string().contains(&file.join("sub").display().to_string()),
        "{error}"
    );
}

#[tokio::test]
async fn concurrent_conditional_commits_have_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(LocalStore::open(dir.path()).unwrap());
    let base = store
        .put_blob("race", Bytes::from_static(b"0"), false, &Condition::None)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for n in 0..8u8 {
        let store = store.clone();
        let base = base.clone();
        tasks.push(tokio::spawn(async move {
            store
                .put_blob("race", Bytes::from(vec![n]), false, &Condition::IfMatch(base))
                .await
        }));
    }
    let mut winners = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => winners += 1,
            Err(StorageError::PreconditionFailed(_)) => {}
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(winners, 1);
}
