//! Cases from public reports against blob-storage filesystems (blobfuse2
//! issues and the limitations its block cache documents), replayed through
//! the mount the way the reporters ran them. Each must give the right bytes
//! and sizes: the same script runs on a local directory and on the mount,
//! and the two trees must match, also after a remount.

use super::*;

/// Small enough to keep the run short, large enough that every case crosses
/// several 1 MiB blocks.
const BIG: u64 = 3 * MIB + 5;
const MEDIUM: u64 = 3 * MIB / 2;

/// One reported case: where it comes from, and the script that replays it
/// in `$ROOT/<name>` with sources in `$SRC`. A script may also check what it
/// reads itself (and exit non-zero); the trees are compared afterwards.
struct Case {
    name: &'static str,
    report: &'static str,
    script: &'static str,
}

const CASES: &[Case] = &[
    Case {
        name: "shorter-overwrite",
        report: "azure-storage-fuse#1209: overwriting with shorter content kept the old size and tail",
        script: r#"
            printf 123456789 > small
            printf 0 > small
            test "$(cat small)" = 0 || { echo "small holds '$(cat small)', not '0'" >&2; exit 1; }
            cp "$SRC/big" big
            cp "$SRC/medium" big
            cmp big "$SRC/medium"
        "#,
    },
    Case {
        name: "awk-transform",
        report: "azure-storage-fuse#1159: a large file written by awk came out with NUL bytes",
        script: r#"
            awk -F'|' '{ print $3 "|" $1 "|" length($2) }' "$SRC/table.csv" > out.csv
            test "$(wc -l < out.csv)" = "$(wc -l < "$SRC/table.csv")"
            if tr -d '\n|0-9a-z-' < out.csv | grep -q .; then echo "unexpected bytes in out.csv" >&2; exit 1; fi
        "#,
    },
    Case {
        name: "seek-back-rewrite",
        report: "azure-storage-fuse#1537: a checkpoint written with seeks back failed ('staged block has less data')",
        script: r#"
            python3 - <<'EOF'
import os
src = open(os.path.join(os.environ["SRC"], "big"), "rb").read()
block = 1 << 20
with open("checkpoint.pt", "wb") as f:
    f.write(src)
    f.seek(0)
    f.write(b"HEADER" * 10)
    f.seek(block - 7)
    f.write(b"x" * 20)
    f.seek(0, 2)
    f.write(b"tail" * 1000)
# Blocks written out of order, the last one short.
fd = os.open("shuffled", os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
for i in (3, 0, 2, 1):
    os.pwrite(fd, src[i * block:(i + 1) * block], i * block)
os.close(fd)
EOF
        "#,
    },
    Case {
        name: "sparse-copy",
        report: "blobfuse2 block-cache limitation: `cp` must be run with --sparse=never",
        script: r#"
            cp --sparse=always "$SRC/sparse" always
            cp --sparse=auto "$SRC/sparse" auto
            cmp always "$SRC/sparse"
            truncate -s $((7 * 1048576 + 3)) hole-then-end
            printf end >> hole-then-end
            cmp <(head -c $((7 * 1048576 + 3)) hole-then-end) <(head -c $((7 * 1048576 + 3)) /dev/zero)
        "#,
    },
    Case {
        name: "read-while-writing",
        report: "blobfuse2 block-cache limitation: a read through another handle does not see data being written",
        script: r#"
            python3 - <<'EOF'
import os
src = open(os.path.join(os.environ["SRC"], "medium"), "rb").read()
with open("rw", "wb") as w:
    w.write(src)
    w.flush()
    with open("rw", "rb") as r:
        got = r.read()
    if got != src:
        raise SystemExit(f"a second handle read {len(got)} bytes, not the {len(src)} written")
    w.seek(100)
    w.write(b"Z" * 10)
    w.seek(len(src) + 4096)
    w.write(b"end")
    w.flush()
    with open("rw", "rb") as r:
        got = r.read()
    expected = src[:100] + b"Z" * 10 + src[110:] + bytes(4096) + b"end"
    if got != expected:
        raise SystemExit(f"a second handle read {len(got)} bytes that differ from the {len(expected)} written")
EOF
        "#,
    },
    Case {
        name: "two-handles",
        report:
            "blobfuse2 block-cache limitation: parallel writes through several handles of one file may be inconsistent",
        script: r#"
            python3 - <<'EOF'
import os, threading
src = open(os.path.join(os.environ["SRC"], "big"), "rb").read()
chunk = 50_000
fds = [os.open("shared", os.O_CREAT | os.O_RDWR, 0o644), os.open("shared", os.O_RDWR)]
def writer(k):
    # Handle k writes every other chunk, so both handles write into every block.
    for i in range(k, len(src) // chunk + 1, 2):
        os.pwrite(fds[k], src[i * chunk:(i + 1) * chunk], i * chunk)
threads = [threading.Thread(target=writer, args=(k,)) for k in (0, 1)]
for t in threads: t.start()
for t in threads: t.join()
os.close(fds[0])
os.pwrite(fds[1], b"late", 10)
os.close(fds[1])
EOF
        "#,
    },
    Case {
        name: "open-truncate",
        report: "blobfuse2 2.4.1 release notes: O_TRUNC in open was not honoured without a write",
        script: r#"
            cp "$SRC/big" emptied
            python3 -c 'import os; os.close(os.open("emptied", os.O_WRONLY | os.O_TRUNC))'
            test "$(stat -c %s emptied)" = 0
            cp "$SRC/big" redirected
            : > redirected
            cp "$SRC/medium" appended
            for i in $(seq 1 200); do printf 'line %d\n' "$i" >> appended; done
        "#,
    },
];

/// Writes the sources every case reads.
fn write_sources(src: &Path) {
    let mut rng = Rng::new(seed());
    write_random_file(&src.join("big"), BIG, &mut rng);
    write_random_file(&src.join("medium"), MEDIUM, &mut rng);
    sh(
        r#"
        cd "$SRC"
        seq 1 300000 | awk '{ printf "%d|row-%x|%d\n", $1, $1 * 7919, $1 % 97 }' > table.csv
        truncate -s $((5 * 1048576)) sparse
        printf 'data in the middle' | dd of=sparse bs=1 seek=$((3 * 1048576 / 2)) conv=notrunc status=none
        head -c 1000 big | dd of=sparse bs=1 seek=$((4 * 1048576 + 3)) conv=notrunc status=none
        "#,
        &[("SRC", src.as_os_str())],
    );
}

/// Every reported case on a local directory and on the mount; the trees must
/// match after the cases and again after a remount.
pub fn reported_cases(backend: &Backend) {
    let _dog = watchdog("reported_cases", Duration::from_secs(10 * 60));
    let scratch = scratch_dir("reported-");
    let src = scratch.path().join("src");
    let reference = scratch.path().join("reference");
    fs::create_dir_all(&reference).expect("create the reference directory");
    write_sources(&src);

    let mut mount = backend.mount(&CacheConfig::SMALL);
    for case in CASES {
        for root in [reference.as_path(), mount.path()] {
            let dir = root.join(case.name);
            fs::create_dir_all(&dir).expect("create the case directory");
            let run = try_sh(
                &format!("cd \"$DIR\"\n{}", case.script),
                &[("DIR", dir.as_os_str()), ("SRC", src.as_os_str())],
            );
            assert!(
                run.success(),
                "{}: case {} ({}) failed in {}:\n{}",
                backend.name(),
                case.name,
                case.report,
                root.display(),
                run.describe()
            );
        }
        assert_same_tree(
            &reference.join(case.name),
            &mount.path().join(case.name),
            &format!("{}: case {} ({})", backend.name(), case.name, case.report),
        );
    }
    mount.remount();
    assert_same_tree(
        &reference,
        mount.path(),
        &format!("{}: every reported case after remount", backend.name()),
    );
}

/// Short kernel and cache timeouts, so a second mount sees changes quickly.
const SHORT_TIMEOUTS: &str =
    "libfuse:\n  attribute-expiration-sec: 1\n  entry-expiration-sec: 1\n  negative-entry-expiration-sec: 0\n";

/// azure-storage-fuse#1512: one machine overwrites a file that another has
/// listed; the other then read the new content cut to the old length. Here
/// the second mount must read exactly one version with its own size, both
/// right away (the kernel had the old size) and after the timeouts.
pub fn second_mount_sees_whole_versions(backend: &Backend) {
    let _dog = watchdog("second_mount_sees_whole_versions", Duration::from_secs(5 * 60));
    let scratch = scratch_dir("two-mounts-");
    let src = scratch.path();
    let mut rng = Rng::new(seed());
    write_random_file(&src.join("big"), BIG, &mut rng);
    write_random_file(&src.join("other"), BIG + 4 * MIB, &mut rng);

    // Default timeouts on the writer; the reader is the one that must not
    // mix versions, first with the kernel's 120 s attributes.
    let writer = backend.mount(&CacheConfig::SMALL);
    let reader = backend.mount(&CacheConfig::SMALL);
    let env = [
        ("A", writer.path().as_os_str()),
        ("B", reader.path().as_os_str()),
        ("SRC", src.as_os_str()),
    ];
    let versions = r#"
        printf 'Hello World\n' > "$A/hello"
        printf 'Goodbye World\n' > "$A/goodbye"
        cp "$A/hello" "$A/corrupt"
        ls -l "$B/" > /dev/null
        test "$(stat -c %s "$B/corrupt")" = 12
        cp "$A/goodbye" "$A/corrupt"
        got=$(od -An -c "$B/corrupt" | tr -s ' ')
        case "$got" in
            *"G o o d b y e W o r l d \n"*|*"H e l l o W o r l d \n"*) ;;
            *) echo "the second mount read '$got': neither version whole" >&2; exit 1 ;;
        esac

        cp "$SRC/big" "$A/large"
        ls -l "$B/" > /dev/null
        cp "$SRC/other" "$A/large"
        if ! cmp -s "$B/large" "$SRC/other" && ! cmp -s "$B/large" "$SRC/big"; then
            echo "the second mount read $(stat -c %s "$B/large") bytes of neither version" >&2
            cmp "$B/large" "$SRC/other" >&2 || true
            exit 1
        fi
    "#;
    sh(versions, &env);
    drop(reader);

    let reader = backend.mount_with(&CacheConfig::SMALL, SHORT_TIMEOUTS);
    let env = [
        ("A", writer.path().as_os_str()),
        ("B", reader.path().as_os_str()),
        ("SRC", src.as_os_str()),
    ];
    let after_timeouts = r#"
        cmp "$B/large" "$SRC/other"
        cp "$SRC/big" "$A/large"
        sleep 2
        cmp "$B/large" "$SRC/big"
        printf 'Hi\n' > "$A/corrupt"
        sleep 2
        test "$(cat "$B/corrupt")" = Hi
        test "$(stat -c %s "$B/corrupt")" = 3
    "#;
    sh(after_timeouts, &env);
}

/// azure-storage-fuse#1426: several backups written in parallel through the
/// block cache failed or stalled. Here four writers and two readers share
/// eight 1 MiB buffers; everything must finish and read back identical.
pub fn parallel_writers_under_pressure(backend: &Backend) {
    let _dog = watchdog("parallel_writers_under_pressure", Duration::from_secs(10 * 60));
    let scratch = scratch_dir("parallel-");
    let src = scratch.path().join("src");
    let mut rng = Rng::new(seed());
    for k in 0..4 {
        write_random_file(&src.join(format!("backup-{k}")), 24 * MIB + k * 4099, &mut rng);
    }
    write_random_file(&src.join("existing"), 16 * MIB + 1, &mut rng);

    let mut mount = backend.mount(&CacheConfig::PRESSURE);
    let env = [("SRC", src.as_os_str()), ("MNT", mount.path().as_os_str())];
    sh(r#"cp "$SRC/existing" "$MNT/existing""#, &env);
    sh(
        r#"
        pids=()
        for k in 0 1 2 3; do
            dd if="$SRC/backup-$k" of="$MNT/backup-$k" bs=1M status=none & pids+=($!)
        done
        for r in 0 1; do
            cmp "$SRC/existing" "$MNT/existing" & pids+=($!)
        done
        status=0
        for pid in "${pids[@]}"; do wait "$pid" || status=1; done
        exit $status
        "#,
        &env,
    );
    assert_same_tree(&src, mount.path(), &format!("{}: parallel writers", backend.name()));
    mount.remount();
    assert_same_tree(
        &src,
        mount.path(),
        &format!("{}: parallel writers after remount", backend.name()),
    );
}
