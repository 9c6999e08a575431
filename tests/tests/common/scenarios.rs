//! Test bodies that run unchanged over every backend: `local.rs` and
//! `azurite.rs` call them with their backend, so that both are held to the
//! same behaviour. Everything is done with the commands a user would type.

use super::*;

/// A 100 MiB file: large enough to need eviction with an 8 MiB cache.
const LARGE: u64 = 100 * MIB;

/// `cp -r` of a tree of files whose sizes sit on and around block
/// boundaries; every file reads back identical through the mount, and again
/// after unmounting and mounting.
pub fn copy_tree_and_remount(backend: &Backend) {
    let _dog = watchdog("copy_tree_and_remount", Duration::from_secs(20 * 60));
    let cache = CacheConfig::SMALL;
    let block = cache.block_size();
    let scratch = scratch_dir("src-");
    let src = scratch.path().join("tree");
    let mut rng = Rng::new(seed());
    let files = [
        ("empty", 0),
        ("one-byte", 1),
        ("block-minus-one", block - 1),
        ("one-block", block),
        ("block-plus-one", block + 1),
        ("nested/two-blocks", 2 * block),
        ("nested/deeper/several-blocks", 5 * block + 12_345),
        ("large", LARGE),
    ];
    for (name, size) in files {
        write_random_file(&src.join(name), size, &mut rng);
    }
    fs::create_dir_all(src.join("nested/empty-dir")).expect("create an empty directory");

    let mut mount = backend.mount(&cache);
    let dst = mount.path().join("tree");
    sh(
        r#"cp -r "$SRC" "$MNT/""#,
        &[("SRC", src.as_os_str()), ("MNT", mount.path().as_os_str())],
    );
    assert_same_tree(&src, &dst, &format!("{}: after cp -r", backend.name()));

    mount.remount();
    assert_same_tree(&src, &dst, &format!("{}: after remount", backend.name()));
}

/// The same sequence of namespace and data operations is applied to a local
/// copy and to the mount; both trees must end up identical, and stay so
/// after a remount.
pub fn namespace_and_data_operations(backend: &Backend) {
    let _dog = watchdog("namespace_and_data_operations", Duration::from_secs(10 * 60));
    let cache = CacheConfig::SMALL;
    let scratch = scratch_dir("ops-");
    let src = scratch.path().join("src");
    let reference = scratch.path().join("reference");
    fs::create_dir_all(&reference).expect("create the reference directory");
    let mut rng = Rng::new(seed());
    // Sizes chosen so that every operation below crosses a 1 MiB block boundary.
    write_random_file(&src.join("a"), 3 * MIB + 5, &mut rng);
    write_random_file(&src.join("b"), 200 * 1024, &mut rng);
    write_random_file(&src.join("c"), 2 * MIB, &mut rng);
    write_random_file(&src.join("patch"), 300 * 1024, &mut rng);
    write_random_file(&src.join("tail"), 3 * MIB / 2, &mut rng);

    let create = r#"
        cd "$ROOT"
        mkdir -p work/dir1/sub
        cp "$SRC/a" work/a
        cp "$SRC/b" work/dir1/b
        cp "$SRC/c" work/dir1/sub/c
        cp "$SRC/c" work/shrink
        cp "$SRC/b" work/grow
        cp "$SRC/b" work/append
        cp "$SRC/a" work/patch-me
        cp "$SRC/b" work/doomed
    "#;
    let modify = r#"
        cd "$ROOT/work"
        mv a a-renamed
        test ! -e a && test -f a-renamed
        mv dir1 dir2
        test ! -e dir1 && test -f dir2/sub/c
        rm doomed
        test ! -e doomed
        mkdir transient
        rmdir transient
        test ! -e transient
        mkdir kept-empty
        if rmdir dir2 2>/dev/null; then echo "rmdir of a non-empty directory succeeded" >&2; exit 1; fi
        truncate -s 1000 shrink
        truncate -s $((3 * 1048576 + 7)) grow
        echo "appended line" >> append
        cat "$SRC/tail" >> append
        dd if="$SRC/patch" of=patch-me bs=1024 seek=900 conv=notrunc status=none
        dd if="$SRC/patch" of=patch-me bs=1 count=10 seek=$((3 * 1048576)) conv=notrunc status=none
    "#;

    let mut mount = backend.mount(&cache);
    for (step, script) in [("create", create), ("modify", modify)] {
        for root in [reference.as_path(), mount.path()] {
            sh(script, &[("ROOT", root.as_os_str()), ("SRC", src.as_os_str())]);
        }
        assert_same_tree(
            &reference.join("work"),
            &mount.path().join("work"),
            &format!("{}: after {step}", backend.name()),
        );
    }

    let listed = ls_sizes(&mount.path().join("work"));
    assert_eq!(listed, ls_sizes(&reference.join("work")), "`ls -l` through the mount");
    assert_eq!(listed.get("shrink"), Some(&1000), "size after truncate -s 1000");
    assert_eq!(listed.get("grow"), Some(&(3 * MIB + 7)), "size after truncate -s grow");
    let grown_part_is_zero = r#"
        cmp <(tail -c +$((200 * 1024 + 1)) "$MNT/work/grow") \
            <(head -c $((3 * 1048576 + 7 - 200 * 1024)) /dev/zero)
    "#;
    sh(grown_part_is_zero, &[("MNT", mount.path().as_os_str())]);

    mount.remount();
    assert_same_tree(
        &reference.join("work"),
        &mount.path().join("work"),
        &format!("{}: after remount", backend.name()),
    );
    sh(grown_part_is_zero, &[("MNT", mount.path().as_os_str())]);
}

/// With eight 1 MiB buffers, writing and reading 100 MiB must go through
/// eviction and still return exactly what was written.
pub fn eviction_under_pressure(backend: &Backend) {
    let _dog = watchdog("eviction_under_pressure", Duration::from_secs(10 * 60));
    let scratch = scratch_dir("pressure-");
    let src = scratch.path().join("src");
    write_random_file(&src.join("large"), LARGE, &mut Rng::new(seed()));

    let mut mount = backend.mount(&CacheConfig::PRESSURE);
    let env = [("SRC", src.as_os_str()), ("MNT", mount.path().as_os_str())];
    sh(r#"cp "$SRC/large" "$MNT/large""#, &env);
    assert_same_tree(&src, mount.path(), &format!("{}: written", backend.name()));
    report_peak_rss(&mount, "after writing and reading 100 MiB with mem-size-mb 8");

    mount.remount();
    assert_same_tree(&src, mount.path(), &format!("{}: remounted", backend.name()));
    report_peak_rss(&mount, "after reading 100 MiB with mem-size-mb 8");
}

/// Prints the peak RSS of the mount's process, for the log.
pub fn report_peak_rss(mount: &Mount, when: &str) -> u64 {
    let pid = mount.pid();
    let peak = peak_rss_bytes(pid).unwrap_or_else(|| panic!("no VmHWM for pid {pid}"));
    eprintln!(
        "peak RSS of blobcache (pid {pid}) {when}: {:.1} MiB",
        peak as f64 / MIB as f64
    );
    peak
}
