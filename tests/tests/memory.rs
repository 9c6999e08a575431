//! End-to-end memory check: the cache's memory budget bounds the process.
//! Reading a 1 GiB file with `mem-size-mb: 64` must keep the peak resident
//! set of the blobcache process (`VmHWM`) under 128 MiB; the figure is
//! printed for the log.
//!
//! Ignored by default; run it with `scripts/test.sh`.

mod common;

use common::*;
use std::time::Duration;

const FILE_SIZE: u64 = 1 << 30;
const PEAK_RSS_LIMIT: u64 = 128 * MIB;

#[test]
#[ignore = "end-to-end: mounts $BLOBCACHE_BIN as root; run scripts/test.sh"]
fn peak_rss_reading_one_gib_with_64_mib_budget() {
    let _dog = watchdog("peak_rss_reading_one_gib", Duration::from_secs(20 * 60));
    let backend = Backend::local();
    let cache = CacheConfig {
        block_size_mb: 4,
        mem_size_mb: 64,
        prefetch: 4,
        parallelism: 8,
    };
    let scratch = scratch_dir("memory-");
    let src = scratch.path().join("src");
    write_random_file(&src.join("one-gib"), FILE_SIZE, &mut Rng::new(seed()));

    let mut mount = backend.mount(&cache);
    let env = [("SRC", src.as_os_str()), ("MNT", mount.path().as_os_str())];
    sh(r#"cp "$SRC/one-gib" "$MNT/one-gib""#, &env);
    scenarios::report_peak_rss(&mount, "after writing 1 GiB with mem-size-mb 64");

    // A fresh process, so that the peak is that of reading alone.
    mount.remount();
    assert_same_tree(&src, mount.path(), "1 GiB file read back");
    let peak = scenarios::report_peak_rss(&mount, "after reading 1 GiB with mem-size-mb 64");
    assert!(
        peak < PEAK_RSS_LIMIT,
        "peak RSS {:.1} MiB while reading 1 GiB with mem-size-mb 64; limit {} MiB",
        peak as f64 / MIB as f64,
        PEAK_RSS_LIMIT / MIB
    );
}
