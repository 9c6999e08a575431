//! End-to-end tests of mount errors that need no storage service: a missing
//! mount point, unknown config keys, an unreachable endpoint. Each must end
//! `blobcache mount` with a non-zero status and a message that says what is
//! wrong, within a bounded time, leaving nothing mounted.
//!
//! Ignored by default; run them with `scripts/test.sh`.

mod common;

use common::azure::{azstorage_yaml, ACCOUNT_KEY};
use common::*;
use std::ffi::OsString;
use std::time::Duration;

#[test]
#[ignore = "end-to-end: runs $BLOBCACHE_BIN as root; run scripts/test.sh"]
fn error_missing_mount_point() {
    let _dog = watchdog("error_missing_mount_point", Duration::from_secs(5 * 60));
    let scratch = scratch_dir("missing-");
    let container = scratch.path().join("container");
    let missing = scratch.path().join("no-such-mount-point");
    let run = run_blobcache(
        ERROR_TIME_LIMIT * 2,
        [
            OsString::from("mount"),
            missing.clone().into(),
            "--local-dir".into(),
            container.into(),
        ],
    );
    eprintln!("{}", run.describe());
    assert!(!run.success(), "mount on a missing directory succeeded");
    assert!(!run.timed_out(), "mount on a missing directory hung");
    let message = format!("{}{}", run.stdout(), run.stderr());
    assert!(
        message.contains(&missing.display().to_string()),
        "the message does not name the missing mount point {}",
        missing.display()
    );
    assert!(!is_mounted(&missing));
}

#[test]
#[ignore = "end-to-end: runs $BLOBCACHE_BIN as root; run scripts/test.sh"]
fn error_unknown_config_key() {
    let _dog = watchdog("error_unknown_config_key", Duration::from_secs(5 * 60));
    // Otherwise valid configs; parsing must fail before any connection.
    let storage = azstorage_yaml(UNREACHABLE, "mycontainer", ACCOUNT_KEY);
    let cases = [
        (
            "blok-size-mb",
            format!("block_cache:\n  blok-size-mb: 1\n  mem-size-mb: 8\n{storage}"),
        ),
        (
            "acount-name",
            format!(
                "block_cache:\n  block-size-mb: 1\n{}",
                storage.replace("account-name", "acount-name")
            ),
        ),
    ];
    for (key, yaml) in cases {
        let (_dir, config) = write_config(&yaml);
        expect_mount_error(
            &[OsString::from("--config-file"), config.into()],
            &[key],
            &format!("unknown key {key}"),
        );
    }
}

#[test]
#[ignore = "end-to-end: runs $BLOBCACHE_BIN as root; run scripts/test.sh"]
fn error_unreachable_endpoint() {
    let _dog = watchdog("error_unreachable_endpoint", Duration::from_secs(5 * 60));
    let yaml = format!(
        "block_cache:\n  block-size-mb: 1\n{}",
        azstorage_yaml(UNREACHABLE, "mycontainer", ACCOUNT_KEY)
    );
    let (_dir, config) = write_config(&yaml);
    expect_mount_error(
        &[OsString::from("--config-file"), config.into()],
        &["127.0.0.1:1", "connect", "unreachable", "refused"],
        "an unreachable endpoint",
    );
}
