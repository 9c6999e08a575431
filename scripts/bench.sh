#!/usr/bin/env bash
# The benchmark suite of blobcache: every figure is measured side by side
# with a peer in the same run, several times, and reported as a ratio.
#
#   scripts/bench.sh [--quick] [--runs N] [--out DIR]
#
# Full mode produces the table published in BENCHMARKS.md; --quick measures
# the same ratios with fewer variants (under 5 minutes on 2 cores).
# Needs root (FUSE), Rust, Node 20 with npm, Python 3; installs fuse3, fio
# and rclone (apt) and Azurite (npm) when missing. Azurite runs on its own
# port ($BLOBCACHE_BENCH_PORT, default 10100) for the run; mounts, servers
# and scratch files are removed however the script ends.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

MODE=full
RUNS=3
OUT=$ROOT/bench/results
while (($#)); do
    case "$1" in
    --quick) MODE=quick ;;
    --runs)
        RUNS=$2
        shift
        ;;
    --out)
        OUT=$2
        shift
        ;;
    *)
        echo "usage: $0 [--quick] [--runs N] [--out DIR]" >&2
        exit 2
        ;;
    esac
    shift
done
((RUNS >= 3)) || { echo "at least 3 runs: each figure is a median with min and max" >&2; exit 2; }

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
PORT=${BLOBCACHE_BENCH_PORT:-10100}
PROXY_PORT=$((PORT + 1))
ENDPOINT=http://127.0.0.1:$PORT/devstoreaccount1
PROXY_ENDPOINT=http://127.0.0.1:$PROXY_PORT/devstoreaccount1
CONTAINER=bench
GIB=$((1 << 30))
# Quick mode moves blobs of 512 MiB instead of 1 GiB to stay under 5 minutes.
if [[ $MODE == quick ]]; then SIZE=$((GIB / 2)); else SIZE=$GIB; fi
SIZE=${BLOBCACHE_BENCH_SIZE:-$SIZE}
BIN=$TARGET_DIR/release/blobcache
TOOL=$TARGET_DIR/release/blobcache-bench

STARTED=$SECONDS
log() { printf '[bench %4ds] %s\n' "$((SECONDS - STARTED))" "$*" >&2; }

# Scratch space in memory: the source file of the writes must not cost disk reads.
WORK=$(mktemp -d /dev/shm/blobcache-bench.XXXXXX)
PIDS=()
AZURITE_STARTED_HERE=0

cleanup() {
    local status=$?
    set +e
    trap - INT TERM
    local mount_point pid
    while read -r mount_point; do
        fusermount3 -uz "$mount_point" 2>/dev/null || umount -l "$mount_point" 2>/dev/null
    done < <(awk -v dir="$WORK/" 'index($5, dir) == 1 { print $5 }' /proc/self/mountinfo | sort -r)
    # Only processes started here that still run what we started: pids get reused.
    local live=()
    for pid in "${PIDS[@]}"; do
        grep -qaE 'blobcache|rclone' "/proc/$pid/cmdline" 2>/dev/null && live+=("$pid")
    done
    for pid in "${live[@]}"; do
        kill "$pid" 2>/dev/null
    done
    for pid in "${live[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null
    done
    if [[ $AZURITE_STARTED_HERE == 1 ]]; then
        BLOBCACHE_AZURITE_PORT=$PORT "$ROOT/scripts/azurite.sh" stop 2>/dev/null
    fi
    rm -rf "$WORK"
    if [[ $status -eq 0 ]]; then log "done"; else log "FAILED (exit status $status)"; fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------- prerequisites ----------

need_packages=()
command -v fusermount3 >/dev/null || need_packages+=(fuse3)
command -v fio >/dev/null || need_packages+=(fio)
command -v rclone >/dev/null || need_packages+=(rclone)
command -v curl >/dev/null || need_packages+=(curl)
if ((${#need_packages[@]})); then
    log "installing ${need_packages[*]}"
    apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_packages[@]}" >&2
fi
[[ -e /dev/fuse ]] || { echo "/dev/fuse is missing" >&2; exit 1; }
log "building (release)"
cargo build --release -q -p blobcache-mount -p blobcache-bench

# Engine hot paths first, while nothing else of the suite runs.
log "engine benchmarks (criterion)"
if [[ $MODE == quick ]]; then CRITERION_ARGS=(--warm-up-time 1 --measurement-time 2); else CRITERION_ARGS=(); fi
cargo bench -q -p blobcache-engine --bench hot_paths -- "${CRITERION_ARGS[@]}" >"$WORK/criterion.log" 2>&1
ENGINE_RESULTS=$WORK/engine.tsv
for estimates in "$TARGET_DIR"/criterion/*/*/new/estimates.json; do
    name=$(basename "$(dirname "$(dirname "$(dirname "$estimates")")")")/$(basename "$(dirname "$(dirname "$estimates")")")
    python3 -c '
import json, sys
m = json.load(open(sys.argv[1]))["median"]
print("%s\t%.1f\t%.1f\t%.1f" % (sys.argv[2], m["point_estimate"], m["confidence_interval"]["lower_bound"],
                                 m["confidence_interval"]["upper_bound"]))
' "$estimates" "$name" >>"$ENGINE_RESULTS"
done
BLOBCACHE_AZURITE_PORT=$PORT "$ROOT/scripts/azurite.sh" install
BLOBCACHE_AZURITE_PORT=$PORT "$ROOT/scripts/azurite.sh" start >/dev/null
AZURITE_STARTED_HERE=1
"$TOOL" setup --endpoint "$ENDPOINT" --container "$CONTAINER"

"$TOOL" proxy --listen "127.0.0.1:$PROXY_PORT" --upstream "127.0.0.1:$PORT" --counter-file "$WORK/proxy.count" &
PIDS+=($!)

export RCLONE_CONFIG=$WORK/rclone.conf
cat >"$RCLONE_CONFIG" <<EOF
[azemu]
type = azureblob
use_emulator = true
endpoint = $ENDPOINT

[azproxy]
type = azureblob
use_emulator = true
endpoint = $PROXY_ENDPOINT
EOF

ours_config() {
    cat <<EOF
azstorage:
  type: block
  account-name: devstoreaccount1
  account-key: Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==
  mode: key
  endpoint: $1
  container: $CONTAINER
EOF
}
ours_config "$ENDPOINT" >"$WORK/ours.yaml"
ours_config "$PROXY_ENDPOINT" >"$WORK/ours-proxy.yaml"

log "preparing a ${SIZE}-byte random source and the blobs"
head -c "$SIZE" /dev/urandom >"$WORK/source.bin"
SOURCE_MD5=$(md5sum <"$WORK/source.bin" | cut -d' ' -f1)
"$TOOL" upload --endpoint "$ENDPOINT" --name seq.bin --file "$WORK/source.bin" >/dev/null
# Random reads always go to a 1 GiB blob, in quick mode too: a blob that fits
# in the cache with room to spare is soon all fetched, which hides the cost
# of a random miss.
if ((SIZE == GIB)); then
    "$TOOL" copy --endpoint "$ENDPOINT" --from seq.bin --to rand.bin
else
    head -c "$GIB" /dev/urandom >"$WORK/rand.bin"
    "$TOOL" upload --endpoint "$ENDPOINT" --name rand.bin --file "$WORK/rand.bin" >/dev/null
    rm "$WORK/rand.bin"
fi
for i in 0 1 2 3; do
    "$TOOL" copy --endpoint "$ENDPOINT" --from seq.bin --to "mem$i.bin"
done

# ---------- helpers ----------

RESULTS=$WORK/results.tsv
: >"$RESULTS"
# record GROUP PEER RUN VALUE UNIT: one measurement.
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RESULTS"; }

cpu_seconds() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.3f", ($14 + $15) / hz }' "/proc/$1/stat"; }
peak_rss_mib() { awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.4f", b - a }'; }
# rate BYTES SECONDS -> MiB/s
rate() { awk -v n="$1" -v s="$2" 'BEGIN { printf "%.2f", n / 1048576 / s }'; }

set_read_ahead() {
    local dev
    dev=$(mountpoint -d "$1")
    echo 1024 >"/sys/class/bdi/$dev/read_ahead_kb"
}

wait_mounted() {
    local mount_point=$1 pid=$2
    for _ in $(seq 300); do
        mountpoint -q "$mount_point" && return 0
        kill -0 "$pid" 2>/dev/null || { echo "mount of $mount_point exited" >&2; return 1; }
        sleep 0.1
    done
    echo "mount of $mount_point not ready" >&2
    return 1
}

MOUNT_PID=
# mount_ours MOUNTPOINT CONFIG [extra blobcache options]
mount_ours() {
    local mount_point=$1 config=$2
    shift 2
    mkdir -p "$mount_point"
    "$BIN" mount "$mount_point" --config-file "$config" --foreground --log-level warn "$@" \
        >>"$WORK/ours.log" 2>&1 &
    MOUNT_PID=$!
    PIDS+=("$MOUNT_PID")
    wait_mounted "$mount_point" "$MOUNT_PID"
}

# mount_rclone MOUNTPOINT REMOTE
mount_rclone() {
    local mount_point=$1 remote=$2
    mkdir -p "$mount_point"
    rm -rf "$WORK/rclone-cache"
    # --vfs-write-back 0s: upload as soon as a file is closed (its default waits 5 s).
    rclone mount "$remote:$CONTAINER" "$mount_point" --vfs-cache-mode full --cache-dir "$WORK/rclone-cache" \
        --vfs-write-back 0s >>"$WORK/rclone.log" 2>&1 &
    MOUNT_PID=$!
    PIDS+=("$MOUNT_PID")
    wait_mounted "$mount_point" "$MOUNT_PID"
    # The same kernel read-ahead as blobcache and the ceiling get.
    set_read_ahead "$mount_point"
}

mount_ceiling() {
    local mount_point=$1
    mkdir -p "$mount_point"
    "$TOOL" ceiling "$mount_point" --size "$SIZE" >>"$WORK/ceiling.log" 2>&1 &
    MOUNT_PID=$!
    PIDS+=("$MOUNT_PID")
    wait_mounted "$mount_point" "$MOUNT_PID"
    set_read_ahead "$mount_point"
}

# mount_shaped MOUNTPOINT [options of blobcache-bench shaped]
mount_shaped() {
    local mount_point=$1
    shift
    mkdir -p "$mount_point"
    "$TOOL" shaped "$mount_point" --size "$SIZE" "$@" >>"$WORK/shaped.log" 2>&1 &
    MOUNT_PID=$!
    PIDS+=("$MOUNT_PID")
    wait_mounted "$mount_point" "$MOUNT_PID"
}

unmount() {
    local mount_point=$1 pid=$MOUNT_PID
    fusermount3 -u "$mount_point" 2>/dev/null || umount "$mount_point"
    for _ in $(seq 600); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    echo "process $pid did not exit after unmounting $mount_point" >&2
    return 1
}

# fio_json ARGS...: runs fio, prints its JSON.
fio_json() { fio --output-format=json --group_reporting --ioengine=psync --invalidate=1 "$@" 2>>"$WORK/fio.err"; }
# fio_field FIELD < json, where FIELD is bw (MiB/s), iops or bytes (of reads or writes, whichever moved).
fio_field() {
    python3 -c '
import json, sys
job = json.load(sys.stdin)["jobs"][0]
side = job["read"] if job["read"]["io_bytes"] else job["write"]
print({"bw": "%.2f" % (side["bw_bytes"] / 1048576), "iops": "%.1f" % side["iops"], "bytes": side["io_bytes"]}[sys.argv[1]])
' "$1"
}

# seq_read MOUNTPOINT/FILE BS JOBS: a cold sequential read of the whole file;
# with 4 jobs each reads one quarter.
seq_read() {
    local file=$1 bs=$2 jobs=$3
    local part=$((SIZE / jobs))
    fio_json --name=seq --filename="$file" --rw=read --bs="$bs" --numjobs="$jobs" --size="$part" \
        --offset_increment="$part" | fio_field bw
}

proxy_bytes() { sleep 0.15; cut -d' ' -f1 "$WORK/proxy.count"; }

# ---------- workloads ----------

# Variants: "block-size jobs" for sequential reads, "block-size jobs seconds" for random reads.
if [[ $MODE == quick ]]; then
    SEQ_VARIANTS=("1m 1" "1m 4")
    RAND_VARIANTS=("4k 1 5")
else
    SEQ_VARIANTS=("1m 1" "1m 4" "128k 1" "128k 4")
    RAND_VARIANTS=("4k 1 5" "4k 4 5" "64k 1 5" "64k 4 5" "4k 1 20" "4k 4 20" "64k 1 20" "64k 4 20")
fi
MNT=$WORK/mnt

cold_sequential_read() {
    local run=$1 variant bs jobs bw t0 t1 cpu0 cpu1 raw16 raw4
    t0=$(now)
    curl -sf -o /dev/null "$ENDPOINT/$CONTAINER/seq.bin"
    t1=$(now)
    record seqread curl "$run" "$(rate "$SIZE" "$(elapsed "$t0" "$t1")")" MiB/s
    raw16=$("$TOOL" download --endpoint "$ENDPOINT" --name seq.bin --range-mb 16 --parallel 8 |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["mib_per_s"])')
    record seqread raw16 "$run" "$raw16" MiB/s
    raw4=$("$TOOL" download --endpoint "$ENDPOINT" --name seq.bin --range-mb 4 --parallel 32 |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["mib_per_s"])')
    record seqread raw4 "$run" "$raw4" MiB/s
    for variant in "${SEQ_VARIANTS[@]}"; do
        read -r bs jobs <<<"$variant"
        mount_ours "$MNT" "$WORK/ours.yaml"
        cpu0=$(cpu_seconds "$MOUNT_PID")
        bw=$(seq_read "$MNT/seq.bin" "$bs" "$jobs")
        cpu1=$(cpu_seconds "$MOUNT_PID")
        record "seqread-$bs-j$jobs" ours "$run" "$bw" MiB/s
        [[ $variant == "1m 1" ]] && record cpu-read ours "$run" "$(elapsed "$cpu0" "$cpu1")" "cpu-s/GiB"
        unmount "$MNT"
        mount_rclone "$MNT" azemu
        cpu0=$(cpu_seconds "$MOUNT_PID")
        bw=$(seq_read "$MNT/seq.bin" "$bs" "$jobs")
        cpu1=$(cpu_seconds "$MOUNT_PID")
        record "seqread-$bs-j$jobs" rclone "$run" "$bw" MiB/s
        [[ $variant == "1m 1" ]] && record cpu-read rclone "$run" "$(elapsed "$cpu0" "$cpu1")" "cpu-s/GiB"
        unmount "$MNT"
    done
}

warm_reread() {
    local run=$1 bw
    mount_ours "$MNT" "$WORK/ours.yaml" --mem-size-mb 2048
    seq_read "$MNT/seq.bin" 1m 1 >/dev/null
    bw=$(seq_read "$MNT/seq.bin" 1m 1)
    record warm ours "$run" "$bw" MiB/s
    unmount "$MNT"
    mount_ceiling "$MNT"
    seq_read "$MNT/blob" 1m 1 >/dev/null
    bw=$(seq_read "$MNT/blob" 1m 1)
    record warm ceiling "$run" "$bw" MiB/s
    unmount "$MNT"
}

# write_until_durable PEER RUN: copies the source into the mount and waits
# until the blob is committed in storage with the full size.
write_until_durable() {
    local peer=$1 run=$2 name="w-$1-$2.bin" t0 t1 cpu0 cpu1
    cpu0=$(cpu_seconds "$MOUNT_PID")
    t0=$(now)
    dd if="$WORK/source.bin" of="$MNT/$name" bs=1M status=none
    "$TOOL" wait-blob --endpoint "$ENDPOINT" --name "$name" --size "$SIZE" >/dev/null
    t1=$(now)
    cpu1=$(cpu_seconds "$MOUNT_PID")
    record write "$peer" "$run" "$(rate "$SIZE" "$(elapsed "$t0" "$t1")")" MiB/s
    record cpu-write "$peer" "$run" "$(elapsed "$cpu0" "$cpu1")" "cpu-s/GiB"
    if [[ $run == 1 ]]; then
        local got
        got=$(curl -sf "$ENDPOINT/$CONTAINER/$name" | md5sum | cut -d' ' -f1)
        [[ $got == "$SOURCE_MD5" ]] || { echo "$peer wrote wrong content to $name" >&2; return 1; }
    fi
}

sequential_write() {
    local run=$1
    record write raw "$run" "$("$TOOL" upload --endpoint "$ENDPOINT" --name "w-raw-$run.bin" --file "$WORK/source.bin" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["mib_per_s"])')" MiB/s
    mount_ours "$MNT" "$WORK/ours.yaml"
    write_until_durable ours "$run"
    unmount "$MNT"
    mount_rclone "$MNT" azemu
    write_until_durable rclone "$run"
    unmount "$MNT"
}

random_read() {
    local run=$1 variant bs jobs secs peer json before after iops bytes
    for variant in "${RAND_VARIANTS[@]}"; do
        read -r bs jobs secs <<<"$variant"
        for peer in ours rclone; do
            if [[ $peer == ours ]]; then mount_ours "$MNT" "$WORK/ours-proxy.yaml"; else mount_rclone "$MNT" azproxy; fi
            before=$(proxy_bytes)
            json=$(fio_json --name=rand --filename="$MNT/rand.bin" --rw=randread --bs="$bs" --numjobs="$jobs" \
                --size="$GIB" --time_based --runtime="$secs")
            after=$(proxy_bytes)
            iops=$(fio_field iops <<<"$json")
            bytes=$(fio_field bytes <<<"$json")
            record "rand-$bs-j$jobs-${secs}s" "$peer" "$run" "$iops" IOPS
            record "amp-$bs-j$jobs-${secs}s" "$peer" "$run" "$(awk -v a="$before" -v b="$after" -v n="$bytes" \
                'BEGIN { printf "%.2f", (b - a) / n }')" "fetched/returned"
            unmount "$MNT"
        done
    done
}

latency_hiding() {
    local run=$1 bw parallelism=8 per_stream=32
    mount_shaped "$MNT" --latency-ms 20 --mib-per-s "$per_stream" --parallelism "$parallelism"
    bw=$(seq_read "$MNT/blob" 1m 1)
    record shaped ours "$run" "$bw" MiB/s
    unmount "$MNT"
    mount_ceiling "$MNT"
    bw=$(seq_read "$MNT/blob" 1m 1)
    unmount "$MNT"
    # The bound: what the requests in flight can carry, or the FUSE ceiling.
    record shaped bound "$run" "$(awk -v c="$bw" -v b="$((parallelism * per_stream))" \
        'BEGIN { printf "%.2f", (b < c ? b : c) }')" MiB/s
}

memory_bound() {
    local run=$1 label mem bw rss i args
    for label in bounded unbounded; do
        if [[ $label == bounded ]]; then mem=256; else mem=4096; fi
        mount_ours "$MNT" "$WORK/ours.yaml" --mem-size-mb "$mem"
        args=()
        for i in 0 1 2 3; do args+=(--name="r$i" --filename="$MNT/mem$i.bin"); done
        bw=$(fio_json --rw=read --bs=1m --size="$SIZE" "${args[@]}" | fio_field bw)
        rss=$(peak_rss_mib "$MOUNT_PID")
        record "mem-$label" ours "$run" "$bw" MiB/s
        record "rss-$label" ours "$run" "$rss" MiB
        unmount "$MNT"
    done
}

# ---------- the run ----------

log "mode $MODE, $RUNS runs, blobs of $SIZE bytes, work dir $WORK"
for run in $(seq "$RUNS"); do
    log "run $run: cold sequential read"
    cold_sequential_read "$run"
    log "run $run: warm re-read"
    warm_reread "$run"
    log "run $run: sequential write"
    sequential_write "$run"
    log "run $run: memory bound"
    memory_bound "$run"
    log "run $run: latency hiding"
    latency_hiding "$run"
    log "run $run: random read"
    random_read "$run"
done

mkdir -p "$OUT"
{
    echo "mode: $MODE"
    echo "runs: $RUNS"
    echo "blob_bytes: $SIZE"
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "kernel: $(uname -r)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //') x $(nproc)"
    echo "memory: $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
    echo "loadavg_at_end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "rustc: $(rustc --version)"
    echo "fio: $(fio --version)"
    echo "rclone: $(rclone version | head -1)"
    echo "azurite: $(node -p "require('${BLOBCACHE_TOOLS_DIR:-$HOME/.cache/blobcache-tools}/azurite/node_modules/azurite/package.json').version")"
    echo "curl: $(curl --version | head -1 | cut -d' ' -f1-2)"
    echo "blobcache_config: block-size-mb 16, mem-size-mb 1024 (warm: 2048), prefetch 11, parallelism 32 (defaults)"
    echo "rclone_flags: --vfs-cache-mode full --vfs-write-back 0s, bdi read_ahead_kb 1024"
} >"$WORK/machine.txt"
cp "$RESULTS" "$OUT/$MODE-raw.tsv"
cp "$ENGINE_RESULTS" "$OUT/$MODE-engine.tsv"
cp "$WORK/machine.txt" "$OUT/$MODE-machine.txt"
python3 "$ROOT/bench/report.py" "$OUT/$MODE-raw.tsv" "$OUT/$MODE-machine.txt" "$OUT/$MODE"
log "results in $OUT/$MODE.md, $OUT/$MODE.json and $OUT/$MODE.svg ($((SECONDS - STARTED)) s)"
