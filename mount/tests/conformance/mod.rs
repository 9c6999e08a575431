//! The behaviour every `BlobStore` backend must share, written once against
//! the trait. Each case works under its own name prefix so that cases can
//! share a container.

use blobcache::storage::{BlobStore, BlockId, CommittedBlock, Condition, StorageError};
use bytes::Bytes;

/// A deterministic, position-dependent pattern so that misplaced ranges show.
pub fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u8)
                .wrapping_mul(31)
                .wrapping_add(seed)
                .wrapping_add((i / 251) as u8)
        })
        .collect()
}

pub fn id(n: u32) -> BlockId {
    BlockId(format!("blk{n:05}").into_bytes())
}

async fn read_all(store: &dyn BlobStore, name: &str) -> Vec<u8> {
    let size = store.get_properties(name).await.unwrap().size as usize;
    let mut buf = vec![0u8; size + 10];
    let n = store.read_range(name, 0, &mut buf, &Condition::None).await.unwrap();
    assert_eq!(n, size, "read_all({name}) short");
    buf.truncate(n);
    buf
}

fn assert_not_found<T: std::fmt::Debug>(result: Result<T, StorageError>, what: &str) {
    match result {
        Err(StorageError::NotFound(_)) => {}
        other => panic!("{what}: expected NotFound, got {other:?}"),
    }
}

fn assert_precondition<T: std::fmt::Debug>(result: Result<T, StorageError>, what: &str) {
    match result {
        Err(StorageError::PreconditionFailed(_)) => {}
        other => panic!("{what}: expected PreconditionFailed, got {other:?}"),
    }
}

fn assert_invalid<T: std::fmt::Debug>(result: Result<T, StorageError>, what: &str) {
    match result {
        Err(StorageError::Invalid(_)) => {}
        other => panic!("{what}: expected Invalid, got {other:?}"),
    }
}

pub async fn stage_and_commit(store: &dyn BlobStore) {
    let name = "stage/dir/file.bin";
    let parts = [pattern(1, 1000), pattern(2, 3000), pattern(3, 17)];
    for (n, part) in parts.iter().enumerate() {
        store
            .put_block(name, &id(n as u32), Bytes::from(part.clone()))
            .await
            .unwrap();
    }
    assert_not_found(store.get_properties(name).await, "staged blocks are not a blob");
    let etag = store
        .put_block_list(name, &[id(0), id(1), id(2)], &Condition::None)
        .await
        .unwrap();
    let props = store.get_properties(name).await.unwrap();
    assert_eq!(props.size, 4017);
    assert_eq!(props.etag, etag);
    assert!(!props.is_dir_marker);
    assert_eq!(read_all(store, name).await, parts.concat());

    // Committing consumed the staged blocks: a later list naming an id that
    // was staged but not used must not find it.
    store
        .put_block(name, &id(7), Bytes::from_static(b"seven"))
        .await
        .unwrap();
    store.put_block_list(name, &[id(0)], &Condition::None).await.unwrap();
    assert_invalid(
        store.put_block_list(name, &[id(7)], &Condition::None).await,
        "a staged block dropped by a commit",
    );
    assert_eq!(read_all(store, name).await, parts[0]);
}

pub async fn reuse_committed_blocks(store: &dyn BlobStore) {
    let name = "reuse/file";
    let a = pattern(10, 500);
    let b = pattern(11, 700);
    let c = pattern(12, 300);
    for (n, part) in [&a, &b, &c].into_iter().enumerate() {
        store
            .put_block(name, &id(n as u32), Bytes::from(part.clone()))
            .await
            .unwrap();
    }
    store
        .put_block_list(name, &[id(0), id(1), id(2)], &Condition::None)
        .await
        .unwrap();
    let d = pattern(13, 900);
    store.put_block(name, &id(3), Bytes::from(d.clone())).await.unwrap();
    store
        .put_block_list(name, &[id(2), id(3), id(0)], &Condition::None)
        .await
        .unwrap();
    assert_eq!(read_all(store, name).await, [&c[..], &d, &a].concat());
    let list = store.get_block_list(name).await.unwrap();
    assert_eq!(
        list,
        vec![
            CommittedBlock { id: id(2), size: 300 },
            CommittedBlock { id: id(3), size: 900 },
            CommittedBlock { id: id(0), size: 500 },
        ]
    );
    // id(1) was dropped from the blob by the last commit.
    assert_invalid(
        store.put_block_list(name, &[id(1)], &Condition::None).await,
        "a block dropped from the committed list",
    );
    // A staged block wins over a committed one with the same id.
    store
        .put_block(name, &id(0), Bytes::from_static(b"new zero"))
        .await
        .unwrap();
    store
        .put_block_list(name, &[id(0), id(3)], &Condition::None)
        .await
        .unwrap();
    assert_eq!(read_all(store, name).await, [&b"new zero"[..], &d].concat());
}

pub async fn conditions(store: &dyn BlobStore) {
    let name = "cond/file";
    let first = store
        .put_blob(name, Bytes::from_static(b"one"), false, &Condition::IfNotExists)
        .await
        .unwrap();
    assert_precondition(
        store
            .put_blob(name, Bytes::from_static(b"x"), false, &Condition::IfNotExists)
            .await,
        "put_blob IfNotExists on an existing blob",
    );
    let second = store
        .put_blob(
            name,
            Bytes::from_static(b"two"),
            false,
            &Condition::IfMatch(first.clone()),
        )
        .await
        .unwrap();
    assert_ne!(first, second);
    assert_precondition(
        store
            .put_blob(
                name,
                Bytes::from_static(b"x"),
                false,
                &Condition::IfMatch(first.clone()),
            )
            .await,
        "put_blob IfMatch with a stale ETag",
    );

    store
        .put_block(name, &id(0), Bytes::from_static(b"three"))
        .await
        .unwrap();
    assert_precondition(
        store
            .put_block_list(name, &[id(0)], &Condition::IfMatch(first.clone()))
            .await,
        "put_block_list IfMatch with a stale ETag",
    );
    assert_precondition(
        store.put_block_list(name, &[id(0)], &Condition::IfNotExists).await,
        "put_block_list IfNotExists on an existing blob",
    );
    assert_eq!(read_all(store, name).await, b"two");
    let third = store
        .put_block_list(name, &[id(0)], &Condition::IfMatch(second.clone()))
        .await
        .unwrap();
    assert_eq!(read_all(store, name).await, b"three");

    let mut buf = [0u8; 5];
    assert_precondition(
        store.read_range(name, 0, &mut buf, &Condition::IfMatch(second)).await,
        "read_range IfMatch with a stale ETag",
    );
    let n = store
        .read_range(name, 0, &mut buf, &Condition::IfMatch(third))
        .await
        .unwrap();
    assert_eq!(&buf[..n], b"three");

    let missing = "cond/missing";
    assert_not_found(
        store
            .read_range(missing, 0, &mut buf, &Condition::IfMatch(first.clone()))
            .await,
        "read_range IfMatch on a missing blob",
    );
    assert_precondition(
        store
            .put_blob(missing, Bytes::from_static(b"x"), false, &Condition::IfMatch(first))
            .await,
        "put_blob IfMatch on a missing blob",
    );
    store
        .put_block(missing, &id(1), Bytes::from_static(b"new"))
        .await
        .unwrap();
    store
        .put_block_list(missing, &[id(1)], &Condition::IfNotExists)
        .await
        .unwrap();
    assert_eq!(read_all(store, missing).await, b"new");
}

pub async fn etag_changes_on_every_commit(store: &dyn BlobStore) {
    let name = "etag/file";
    let mut seen = Vec::new();
    for round in 0..3 {
        store
            .put_block(name, &id(0), Bytes::from_static(b"same"))
            .await
            .unwrap();
        let etag = store.put_block_list(name, &[id(0)], &Condition::None).await.unwrap();
        assert!(!seen.contains(&etag), "round {round}: ETag {etag:?} reused");
        assert_eq!(store.get_properties(name).await.unwrap().etag, etag);
        seen.push(etag);
        let etag = store
            .put_blob(name, Bytes::from_static(b"same"), false, &Condition::None)
            .await
            .unwrap();
        assert!(!seen.contains(&etag), "round {round}: ETag {etag:?} reused");
        seen.push(etag);
    }
}

pub async fn ranged_reads(store: &dyn BlobStore) {
    let name = "range/file";
    let data = pattern(42, 1000);
    store
        .put_blob(name, Bytes::from(data.clone()), false, &Condition::None)
        .await
        .unwrap();
    let mut buf = vec![0u8; 100];
    let n = store.read_range(name, 200, &mut buf, &Condition::None).await.unwrap();
    assert_eq!(n, 100);
    assert_eq!(buf, data[200..300]);

    let n = store.read_range(name, 950, &mut buf, &Condition::None).await.unwrap();
    assert_eq!(n, 50, "short read at the end");
    assert_eq!(buf[..50], data[950..]);

    for offset in [1000, 5000] {
        let n = store
            .read_range(name, offset, &mut buf, &Condition::None)
            .await
            .unwrap();
        assert_eq!(n, 0, "read at {offset}, at or past the end");
    }

    let n = store.read_range(name, 0, &mut [], &Condition::None).await.unwrap();
    assert_eq!(n, 0, "empty buffer");

    let empty = "range/empty";
    store
        .put_blob(empty, Bytes::new(), false, &Condition::None)
        .await
        .unwrap();
    let n = store.read_range(empty, 0, &mut buf, &Condition::None).await.unwrap();
    assert_eq!(n, 0, "read of an empty blob");
    assert_eq!(store.get_properties(empty).await.unwrap().size, 0);
}

pub async fn block_list_round_trip(store: &dyn BlobStore) {
    let name = "blocklist/file";
    let ids: Vec<BlockId> = (0..4u8).map(|n| BlockId(vec![0xff, n, 0, 0x80])).collect();
    let sizes = [1usize, 4096, 333, 70_000];
    for (block, size) in ids.iter().zip(sizes) {
        store
            .put_block(name, block, Bytes::from(pattern(block.0[1], size)))
            .await
            .unwrap();
    }
    store.put_block_list(name, &ids, &Condition::None).await.unwrap();
    let list = store.get_block_list(name).await.unwrap();
    let expected: Vec<CommittedBlock> = ids
        .iter()
        .zip(sizes)
        .map(|(block, size)| CommittedBlock {
            id: block.clone(),
            size: size as u64,
        })
        .collect();
    assert_eq!(list, expected);

    // A blob put in one piece has no block list.
    store
        .put_blob(name, Bytes::from_static(b"whole"), false, &Condition::None)
        .await
        .unwrap();
    assert_eq!(store.get_block_list(name).await.unwrap(), vec![]);
    assert_eq!(read_all(store, name).await, b"whole");
}

pub async fn listing(store: &dyn BlobStore) {
    let put = |name: &'static str, marker: bool| async move {
        let data = if marker {
            Bytes::new()
        } else {
            Bytes::from(name.as_bytes())
        };
        store.put_blob(name, data, marker, &Condition::None).await.unwrap();
    };
    put("list/a.txt", false).await;
    put("list/b/c.txt", false).await;
    put("list/b/d/e.txt", false).await;
    put("list/m", true).await;
    put("list/n", true).await;
    put("list/n/inside.txt", false).await;
    put("list/z.txt", false).await;
    put("listing-sibling.txt", false).await;

    let top = store.list("list/").await.unwrap();
    let names: Vec<&str> = top.blobs.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["list/a.txt", "list/z.txt"]);
    assert_eq!(top.prefixes, ["list/b/", "list/m/", "list/n/"]);
    assert_eq!(top.blobs[0].properties.size, 10);
    assert!(!top.blobs[0].properties.is_dir_marker);

    let b = store.list("list/b/").await.unwrap();
    let names: Vec<&str> = b.blobs.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["list/b/c.txt"]);
    assert_eq!(b.prefixes, ["list/b/d/"]);

    let m = store.list("list/m/").await.unwrap();
    assert!(m.blobs.is_empty() && m.prefixes.is_empty(), "{m:?}");
    assert!(store.list("list/nothing/").await.unwrap() == Default::default());

    let marker = store.get_properties("list/m").await.unwrap();
    assert!(marker.is_dir_marker);
    assert_eq!(marker.size, 0);
    assert!(store.get_properties("list/n").await.unwrap().is_dir_marker);

    let root = store.list("").await.unwrap();
    assert!(root.prefixes.contains(&"list/".to_owned()), "{root:?}");
    assert!(root.blobs.iter().any(|b| b.name == "listing-sibling.txt"));
}

pub async fn delete(store: &dyn BlobStore) {
    let name = "del/file";
    store
        .put_blob(name, Bytes::from_static(b"bye"), false, &Condition::None)
        .await
        .unwrap();
    store.delete_blob(name).await.unwrap();
    assert_not_found(store.get_properties(name).await, "deleted blob properties");
    let mut buf = [0u8; 3];
    assert_not_found(
        store.read_range(name, 0, &mut buf, &Condition::None).await,
        "read of a deleted blob",
    );
    assert_not_found(store.delete_blob(name).await, "second delete");
    assert!(store.list("del/").await.unwrap().blobs.iter().all(|b| b.name != name));

    store
        .put_blob("del/marker", Bytes::new(), true, &Condition::None)
        .await
        .unwrap();
    assert_eq!(store.list("del/").await.unwrap().prefixes, ["del/marker/"]);
    store.delete_blob("del/marker").await.unwrap();
    assert_not_found(store.get_properties("del/marker").await, "deleted marker");
    assert!(store.list("del/").await.unwrap().prefixes.is_empty());
}

pub async fn copy(store: &dyn BlobStore) {
    let from = "copy/src";
    let data = pattern(5, 2000);
    store.put_block(from, &id(0), Bytes::from(data.clone())).await.unwrap();
    let source_etag = store.put_block_list(from, &[id(0)], &Condition::None).await.unwrap();
    let copy_etag = store.copy_blob(from, "copy/dst/a").await.unwrap();
    assert_ne!(copy_etag, source_etag);
    assert_eq!(read_all(store, "copy/dst/a").await, data);
    assert_eq!(store.get_properties("copy/dst/a").await.unwrap().etag, copy_etag);
    assert_eq!(read_all(store, from).await, data, "source intact");

    // Copying over an existing blob replaces it.
    store
        .put_blob("copy/old", Bytes::from_static(b"old"), false, &Condition::None)
        .await
        .unwrap();
    store.copy_blob(from, "copy/old").await.unwrap();
    assert_eq!(read_all(store, "copy/old").await, data);

    // A rename, as callers do it.
    store.copy_blob(from, "copy/renamed").await.unwrap();
    store.delete_blob(from).await.unwrap();
    assert_not_found(store.get_properties(from).await, "renamed source");
    assert_eq!(read_all(store, "copy/renamed").await, data);

    assert_not_found(
        store.copy_blob("copy/missing", "copy/x").await,
        "copy of a missing blob",
    );
}

pub async fn not_found(store: &dyn BlobStore) {
    let name = "nf/none";
    assert_not_found(store.get_properties(name).await, "get_properties");
    assert_not_found(store.get_block_list(name).await, "get_block_list");
    let mut buf = [0u8; 8];
    assert_not_found(
        store.read_range(name, 0, &mut buf, &Condition::None).await,
        "read_range",
    );
    assert_not_found(store.delete_blob(name).await, "delete_blob");
    assert_not_found(store.copy_blob(name, "nf/other").await, "copy_blob");
    assert_not_found(
        store.get_properties("nf/none/below").await,
        "get_properties below a missing name",
    );
}

pub async fn mismatched_id_lengths(store: &dyn BlobStore) {
    let name = "idlen/file";
    let short = BlockId(b"abcd".to_vec());
    let long = BlockId(b"abcdefgh".to_vec());
    store.put_block(name, &long, Bytes::from_static(b"long")).await.unwrap();
    // Azure may refuse the second length already when staging.
    let staged_short = store.put_block(name, &short, Bytes::from_static(b"short")).await;
    if let Err(e) = &staged_short {
        assert!(matches!(e, StorageError::Invalid(_)), "{e:?}");
    }
    assert_invalid(
        store
            .put_block_list(name, &[long.clone(), short], &Condition::None)
            .await,
        "commit of ids with different lengths",
    );
    assert_not_found(store.get_properties(name).await, "after a refused commit");
    store.put_block_list(name, &[long], &Condition::None).await.unwrap();
    assert_eq!(read_all(store, name).await, b"long");
}

pub async fn hundred_blocks(store: &dyn BlobStore) {
    let name = "many/blocks";
    let mut expected = Vec::new();
    let mut ids = Vec::new();
    for n in 0..100u32 {
        let data = pattern(n as u8, 1000 + n as usize);
        store.put_block(name, &id(n), Bytes::from(data.clone())).await.unwrap();
        expected.extend_from_slice(&data);
        ids.push(id(n));
    }
    store.put_block_list(name, &ids, &Condition::None).await.unwrap();
    assert_eq!(read_all(store, name).await, expected);
    let list = store.get_block_list(name).await.unwrap();
    assert_eq!(list.len(), 100);
    assert!(list
        .iter()
        .enumerate()
        .all(|(n, b)| b.id == id(n as u32) && b.size == 1000 + n as u64));

    let mut buf = vec![0u8; 2500];
    let n = store
        .read_range(name, 50_000, &mut buf, &Condition::None)
        .await
        .unwrap();
    assert_eq!(n, 2500);
    assert_eq!(buf, expected[50_000..52_500]);
}

pub async fn check_access(store: &dyn BlobStore) {
    store.check_access().await.unwrap();
    assert!(!store.describe().is_empty());
}

/// Blocks and ranges of several MiB, past the sizes where services change
/// how they answer (Azure checksums ranges under 4 MiB).
pub async fn large_blocks(store: &dyn BlobStore) {
    let name = "large/file";
    let a = pattern(1, 3 << 20);
    let b = pattern(2, (3 << 20) + 5);
    store.put_block(name, &id(0), Bytes::from(a.clone())).await.unwrap();
    store.put_block(name, &id(1), Bytes::from(b.clone())).await.unwrap();
    store
        .put_block_list(name, &[id(0), id(1)], &Condition::None)
        .await
        .unwrap();
    let all = [a, b].concat();
    let mut buf = vec![0u8; 5 << 20];
    let n = store.read_range(name, 1000, &mut buf, &Condition::None).await.unwrap();
    assert_eq!(n, 5 << 20);
    assert!(buf == all[1000..1000 + (5 << 20)]);
    let n = store
        .read_range(name, 2 << 20, &mut buf, &Condition::None)
        .await
        .unwrap();
    assert_eq!(n, all.len() - (2 << 20));
    assert!(buf[..n] == all[2 << 20..]);
}
