//! Swarm testing: every seed draws its own world. Fault probabilities,
//! workload mix, block size, pool size, prefetch and parallelism vary, and
//! whole features are switched off for some seeds, so that rare
//! combinations (a pool of two buffers with no prefetch and one request in
//! flight, a store that only ever throttles) get their turn.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Duration;

/// Probabilities (per request) and shapes of the faults of the simulated store.
#[derive(Clone, Debug, Default)]
pub struct StoreFaults {
    pub latency_min_ms: u64,
    pub latency_max_ms: u64,
    /// Chance that a request takes the tail latency instead.
    pub tail_prob: f64,
    pub tail_ms: u64,
    /// Bytes per second of one request's body; `None`: unlimited.
    pub bytes_per_sec: Option<u64>,
    /// 500 Internal Server Error.
    pub p_500: f64,
    /// 503 Server Busy with a retry-after.
    pub p_503: f64,
    /// The request times out on the server side.
    pub p_timeout: f64,
    /// The request never answers; only the shell's timeout ends it.
    pub p_hang: f64,
    /// 403 on any request.
    pub p_403: f64,
    /// 404 on reads and stages (never on properties: that means "gone").
    pub p_404: f64,
    /// 412 on commits.
    pub p_412: f64,
    /// A commit fails with a transient error after it took effect.
    pub p_commit_lost_reply: f64,
    /// Extra time every commit takes.
    pub commit_delay_ms: u64,
    /// A read answers that it filled one byte more than it was given room
    /// for: the answer of a broken server or driver (scenario 1.2 only).
    pub p_garbled_read: f64,
}

/// Relative weights of client operations.
#[derive(Clone, Debug)]
pub struct Mix {
    pub seq_read: u32,
    pub random_read: u32,
    pub write: u32,
    pub append: u32,
    pub truncate: u32,
    pub fsync: u32,
    pub reopen: u32,
    pub dup: u32,
    pub unlink: u32,
    pub rename: u32,
}

/// Everything that describes one simulated world.
#[derive(Clone, Debug)]
pub struct Params {
    pub block_size: u64,
    pub pool_buffers: u64,
    pub prefetch_blocks: u32,
    pub parallelism: u32,
    pub request_timeout: Duration,
    pub max_attempts: u32,
    pub clients_per_mount: usize,
    pub ops_per_client: usize,
    pub private_files: usize,
    pub shared_files: usize,
    pub outside_files: usize,
    /// Largest offset a client touches, in blocks.
    pub max_blocks: u64,
    pub mix: Mix,
    pub faults: StoreFaults,
    /// How long faults are injected; then they stop and liveness is checked.
    pub fault_phase: Duration,
    pub outside_writer: bool,
    /// Shut mount 0 down while its clients are still running.
    pub unmount_while_busy: bool,
    /// Clients also try offsets near the largest blob size.
    pub huge_offsets: bool,
    /// Some closes release without flushing first (the commit then runs in
    /// the background, after the release has returned).
    pub release_without_flush: bool,
    /// Every read that starts and ends in the fault phase must finish within
    /// `world::demand_read_bound`; clients read only the outside writer's
    /// blobs, so that no read waits for a commit. Only meaningful in a world
    /// built for it: no store faults, no flushes or closes, a pool that
    /// never runs out (scenario 7.4).
    pub check_read_latency: bool,
}

/// One of `choices`, which are literal and never empty.
fn pick<T: Copy>(rng: &mut ChaCha8Rng, choices: &[T]) -> T {
    choices[rng.gen_range(0..choices.len())]
}

fn prob(rng: &mut ChaCha8Rng, on: f64, max: f64) -> f64 {
    if rng.gen_bool(on) {
        rng.gen_range(0.0..max)
    } else {
        0.0
    }
}

fn weight(rng: &mut ChaCha8Rng, off: f64, max: u32) -> u32 {
    if rng.gen_bool(off) {
        0
    } else {
        rng.gen_range(1..=max)
    }
}

impl Params {
    /// The world of one seed. Its own RNG stream, so the same seed always
    /// gives the same world whatever the runtime draws later.
    pub fn from_seed(seed: u64) -> Params {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5157_6f72_6c64_0001);
        let rng = &mut rng;
        let faulty = rng.gen_bool(0.85);
        let faults = if faulty {
            StoreFaults {
                latency_min_ms: rng.gen_range(0..5),
                latency_max_ms: rng.gen_range(5..80),
                tail_prob: prob(rng, 0.5, 0.05),
                tail_ms: rng.gen_range(100..3000),
                bytes_per_sec: rng.gen_bool(0.4).then(|| rng.gen_range(10_000..10_000_000)),
                p_500: prob(rng, 0.5, 0.1),
                p_503: prob(rng, 0.5, 0.1),
                p_timeout: prob(rng, 0.3, 0.05),
                p_hang: prob(rng, 0.3, 0.03),
                p_403: prob(rng, 0.15, 0.01),
                p_404: prob(rng, 0.15, 0.01),
                p_412: prob(rng, 0.15, 0.05),
                p_commit_lost_reply: prob(rng, 0.2, 0.05),
                commit_delay_ms: if rng.gen_bool(0.3) { rng.gen_range(0..2000) } else { 0 },
                p_garbled_read: 0.0,
            }
        } else {
            StoreFaults {
                latency_min_ms: 1,
                latency_max_ms: rng.gen_range(2..20),
                ..StoreFaults::default()
            }
        };
        let mix = Mix {
            seq_read: weight(rng, 0.1, 10),
            random_read: weight(rng, 0.2, 10),
            write: weight(rng, 0.1, 10),
            append: weight(rng, 0.3, 6),
            truncate: weight(rng, 0.4, 3),
            fsync: weight(rng, 0.3, 4),
            reopen: weight(rng, 0.3, 3),
            dup: weight(rng, 0.5, 2),
            unlink: weight(rng, 0.6, 1),
            rename: weight(rng, 0.6, 1),
        };
        Params {
            block_size: pick(rng, &[16, 64, 256, 1024, 4096]),
            pool_buffers: pick(rng, &[2, 3, 4, 6, 8, 16, 64]),
            prefetch_blocks: pick(rng, &[0, 1, 2, 4, 8]),
            parallelism: pick(rng, &[1, 2, 3, 4, 8, 16]),
            request_timeout: Duration::from_millis(rng.gen_range(500..5000)),
            max_attempts: rng.gen_range(1..6),
            clients_per_mount: rng.gen_range(1..5),
            ops_per_client: rng.gen_range(10..120),
            private_files: rng.gen_range(1..4),
            shared_files: if rng.gen_bool(0.7) { rng.gen_range(1..3) } else { 0 },
            outside_files: if rng.gen_bool(0.6) { rng.gen_range(1..3) } else { 0 },
            max_blocks: rng.gen_range(2..12),
            mix,
            faults,
            fault_phase: Duration::from_millis(rng.gen_range(1_000..20_000)),
            outside_writer: rng.gen_bool(0.6),
            unmount_while_busy: rng.gen_bool(0.1),
            huge_offsets: rng.gen_bool(0.1),
            release_without_flush: rng.gen_bool(0.2),
            check_read_latency: false,
        }
    }
}
