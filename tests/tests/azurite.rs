//! End-to-end tests over Azurite: the same scenarios as `local.rs`, plus
//! what only a real blob service shows: blobs uploaded by other clients read
//! back byte for byte, the block layout of blobs written through the mount,
//! and a wrong account key.
//!
//! Ignored by default; `scripts/test.sh` starts Azurite, sets
//! `BLOBCACHE_AZURITE_ENDPOINT` and runs them.

mod common;

use common::azure::{self, ACCOUNT_KEY};
use common::*;
use std::ffi::OsString;
use std::fs;
use std::time::Duration;

#[test]
#[ignore = "end-to-end: mounts $BLOBCACHE_BIN over Azurite as root; run scripts/test.sh"]
fn copy_tree_and_remount() {
    scenarios::copy_tree_and_remount(&Backend::azurite("copy-tree"));
}

#[test]
#[ignore = "end-to-end: mounts $BLOBCACHE_BIN over Azurite as root; run scripts/test.sh"]
fn namespace_and_data_operations() {
    scenarios::namespace_and_data_operations(&Backend::azurite("namespace"));
}

#[test]
#[ignore = "end-to-end: mounts $BLOBCACHE_BIN over Azurite as root; run scripts/test.sh"]
fn eviction_under_pressure() {
    scenarios::eviction_under_pressure(&Backend::azurite("pressure"));
}

#[test]
#[ignore = "end-to-end: mounts $BLOBCACHE_BIN over Azurite as root; run scripts/test.sh"]
fn reported_cases() {
    reported::reported_cases(&Backend::azurite("reported"));
}

#[test]
#[ignore = "end-to-end: mounts $BLOBCACHE_BIN over Azurite as root; run scripts/test.sh"]
fn second_mount_sees_whole_versions() {
    reported::second_mount_sees_whole_versions(&Backend::azurite("two-mounts"));
}

#[test]
#[ignore = "end-to-end: mounts $BLOBCACHE_BIN over Azurite as root; run scripts/test.sh"]
fn parallel_writers_under_pressure() {
    reported::parallel_writers_under_pressure(&Backend::azurite("parallel"));
}

/// Fails unless `name` is laid out the way blobfuse2 lays out blobs: every
/// block but the last exactly `block_size`, the last not empty and not
/// larger, all block ids of one length, sizes adding up to the content.
fn assert_uniform_layout(az: &azure::Azurite, name: &str, block_size: u64, content_len: u64) {
    let blocks = az.committed_blocks(name);
    let sizes: Vec<u64> = blocks.iter().map(|(_, size)| *size).collect();
    eprintln!("{name}: {} blocks, sizes {sizes:?}", blocks.len());
    assert_eq!(
        sizes.iter().sum::<u64>(),
        content_len,
        "{name}: block sizes {sizes:?} do not add up to the content length"
    );
    if let Some((last, rest)) = sizes.split_last() {
        assert!(
            rest.iter().all(|&size| size == block_size),
            "{name}: a block other than the last is not {block_size} bytes: {sizes:?}"
        );
        assert!(
            *last > 0 && *last <= block_size,
            "{name}: last block of {last} bytes (block size {block_size}): {sizes:?}"
        );
    }
    if let Some((first_id, _)) = blocks.first() {
        assert!(
            blocks.iter().all(|(id, _)| id.len() == first_id.len()),
            "{name}: block ids of different lengths"
        );
    }
}

/// Blobs written by other Azure clients: one Put Blob, and one block list of
/// blocks of unrelated sizes (under a virtual directory). Both read back byte
/// for byte, in full and in a range that crosses their block boundaries;
/// appending to the second rewrites it in blobcache's layout.
#[test]
#[ignore = "end-to-end: mounts $BLOBCACHE_BIN over Azurite as root; run scripts/test.sh"]
fn reads_and_extends_blobs_uploaded_directly() {
    let _dog = watchdog("reads_blobs_uploaded_directly", Duration::from_secs(10 * 60));
    let backend = Backend::azurite("external");
    let az = backend.azurite_client();
    let cache = CacheConfig::SMALL;
    let mut rng = Rng::new(seed());
    let single = rng.bytes(3 * MIB as usize + 17);
    let block_sizes = [100 * 1024, 3 * MIB as usize / 2 + 3, 7, 2 * MIB as usize, 1];
    let blocks: Vec<Vec<u8>> = block_sizes.iter().map(|&n| rng.bytes(n)).collect();
    az.put_blob("single.bin", single.clone());
    az.put_blocks("dir/blocks.bin", &blocks);

    let scratch = scratch_dir("external-");
    let expected = scratch.path().join("expected");
    fs::create_dir_all(expected.join("dir")).expect("create the expected tree");
    fs::write(expected.join("single.bin"), &single).expect("write expected single.bin");
    fs::write(expected.join("dir/blocks.bin"), blocks.concat()).expect("write expected blocks");

    let mut mount = backend.mount(&cache);
    assert_same_tree(&expected, mount.path(), "blobs uploaded directly");
    let env = [("EXP", expected.as_os_str()), ("MNT", mount.path().as_os_str())];
    // From inside the first block to inside the fourth, in odd-sized reads.
    sh(
        r#"for f in single.bin dir/blocks.bin; do
               cmp <(dd if="$MNT/$f" bs=4099 skip=20 count=700 status=none) \
                   <(dd if="$EXP/$f" bs=4099 skip=20 count=700 status=none)
           done"#,
        &env,
    );

    let append = r#"head -c 100000 "$EXP/single.bin" >> "$ROOT/dir/blocks.bin""#;
    sh(
        append,
        &[("EXP", expected.as_os_str()), ("ROOT", mount.path().as_os_str())],
    );
    sh(append, &[("EXP", expected.as_os_str()), ("ROOT", expected.as_os_str())]);
    mount.unmount();

    let want = fs::read(expected.join("dir/blocks.bin")).expect("read expected blocks");
    assert!(
        az.get("dir/blocks.bin") == want,
        "dir/blocks.bin in storage differs from the expected content after the append"
    );
    assert_uniform_layout(az, "dir/blocks.bin", cache.block_size(), want.len() as u64);
    mount.mount();
    assert_same_tree(&expected, mount.path(), "after append and remount");
}

/// Files written through the mount are block blobs in blobfuse2's layout,
/// with exactly the content written.
#[test]
#[ignore = "end-to-end: mounts $BLOBCACHE_BIN over Azurite as root; run scripts/test.sh"]
fn layout_of_blobs_written_through_the_mount() {
    let _dog = watchdog("layout_of_blobs_written", Duration::from_secs(10 * 60));
    let backend = Backend::azurite("layout");
    let az = backend.azurite_client();
    let cache = CacheConfig::SMALL;
    let block = cache.block_size();
    let scratch = scratch_dir("layout-");
    let src = scratch.path().join("src");
    let mut rng = Rng::new(seed());
    let files = [
        ("empty", 0),
        ("small", 1000),
        ("exact", 2 * block),
        ("partial", 3 * block + block / 2),
        ("sub/dir/nested", block + 1),
    ];
    for (name, size) in files {
        write_random_file(&src.join(name), size, &mut rng);
    }
    let mut mount = backend.mount(&cache);
    sh(
        r#"cp -r "$SRC/." "$MNT/""#,
        &[("SRC", src.as_os_str()), ("MNT", mount.path().as_os_str())],
    );
    mount.unmount();

    for (name, size) in files {
        let want = fs::read(src.join(name)).expect("read a source file");
        assert!(
            az.get(name) == want,
            "blob {name} differs from the file copied into the mount"
        );
        assert_uniform_layout(az, name, block, size);
    }
}

/// A wrong account key is refused at mount time with a clear message, not
/// retried for minutes and not reported as a working mount.
#[test]
#[ignore = "end-to-end: mounts $BLOBCACHE_BIN over Azurite as root; run scripts/test.sh"]
fn error_wrong_account_key() {
    let _dog = watchdog("error_wrong_account_key", Duration::from_secs(5 * 60));
    let backend = Backend::azurite("wrong-key");
    let az = backend.azurite_client();
    let wrong_key = ACCOUNT_KEY.replacen("Eby8", "AAAA", 1);
    let yaml = format!("{}{}", CacheConfig::SMALL.yaml(), az.azstorage_yaml(&wrong_key));
    let (_dir, config) = write_config(&yaml);
    expect_mount_error(
        &[OsString::from("--config-file"), config.into()],
        &["key", "auth", "403", "denied", "forbidden", "credential", "signature"],
        "a wrong account key",
    );
}
