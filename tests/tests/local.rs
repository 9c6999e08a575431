//! End-to-end tests over the embedded default backend: a container kept in
//! a local directory (`blobcache mount --local-dir DIR`).
//!
//! Ignored by default because they mount the real binary as root; run them
//! with `scripts/test.sh`.

mod common;

use common::{scenarios, Backend};

#[test]
#[ignore = "end-to-end: mounts $BLOBCACHE_BIN as root; run scripts/test.sh"]
fn copy_tree_and_remount() {
    scenarios::copy_tree_and_remount(&Backend::local());
}

#[test]
#[ignore = "end-to-end: mounts $BLOBCACHE_BIN as root; run scripts/test.sh"]
fn namespace_and_data_operations() {
    scenarios::namespace_and_data_operations(&Backend::local());
}

#[test]
#[ignore = "end-to-end: mounts $BLOBCACHE_BIN as root; run scripts/test.sh"]
fn eviction_under_pressure() {
    scenarios::eviction_under_pressure(&Backend::local());
}

#[test]
#[ignore = "end-to-end: mounts $BLOBCACHE_BIN as root; run scripts/test.sh"]
fn reported_cases() {
    common::reported::reported_cases(&Backend::local());
}

#[test]
#[ignore = "end-to-end: mounts $BLOBCACHE_BIN as root; run scripts/test.sh"]
fn second_mount_sees_whole_versions() {
    common::reported::second_mount_sees_whole_versions(&Backend::local());
}

#[test]
#[ignore = "end-to-end: mounts $BLOBCACHE_BIN as root; run scripts/test.sh"]
fn parallel_writers_under_pressure() {
    common::reported::parallel_writers_under_pressure(&Backend::local());
}
