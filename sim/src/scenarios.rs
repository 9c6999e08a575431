//! Named scenarios from the audit: each pins the parts of the world that
//! make its interleaving likely, names the coverage mark that proves the
//! interleaving was reached, and names the audit fault that can be put back
//! into the engine or shell. With the fault off every seed must pass and
//! some seed must reach the mark; with it on, some seed must fail.

use crate::params::{Mix, Params, StoreFaults};
use crate::runner::{run_parallel, RunSpec};
use crate::world::RunSetup;
use blobcache_engine::SimFaults;
use std::collections::BTreeSet;
use std::time::Duration;

/// One audit item as a scenario.
pub struct Scenario {
    pub id: &'static str,
    pub title: &'static str,
    /// The mark some seed must reach with the fault off.
    pub mark: &'static str,
    /// The fault switch that puts the audit's fault back.
    pub fault: &'static str,
    /// Seeds run with the fault off, and at most this many with it on.
    pub seeds: u64,
    pub tweak: fn(&mut Params, u64),
}

impl Scenario {
    pub fn spec(&self, fault_on: bool) -> RunSpec {
        let mut setup = RunSetup::default();
        if fault_on {
            set_fault(&mut setup.faults, self.fault);
        }
        RunSpec {
            setup,
            tweak: Some(self.tweak),
            keep_trace: false,
        }
    }
}

/// Every fault switch by name.
pub const FAULTS: &[&str] = &[
    "keep_pin_on_error",
    "panic_on_internal",
    "open_ignores_pending_commit",
    "hide_write_errors",
    "early_shutdown_reply",
    "skip_size_check",
    "skip_fetch_zeroing",
    "endless_buffer_wait",
    "shared_block_ids",
    "no_request_timeout",
    "keep_prefetch_on_release",
    "fifo_io_order",
];

/// Turns one fault switch on by name.
pub fn set_fault(faults: &mut SimFaults, name: &str) -> Option<()> {
    let switch = match name {
        "keep_pin_on_error" => &mut faults.keep_pin_on_error,
        "panic_on_internal" => &mut faults.panic_on_internal,
        "open_ignores_pending_commit" => &mut faults.open_ignores_pending_commit,
        "hide_write_errors" => &mut faults.hide_write_errors,
        "early_shutdown_reply" => &mut faults.early_shutdown_reply,
        "skip_size_check" => &mut faults.skip_size_check,
        "skip_fetch_zeroing" => &mut faults.skip_fetch_zeroing,
        "endless_buffer_wait" => &mut faults.endless_buffer_wait,
        "shared_block_ids" => &mut faults.shared_block_ids,
        "no_request_timeout" => &mut faults.no_request_timeout,
        "keep_prefetch_on_release" => &mut faults.keep_prefetch_on_release,
        "fifo_io_order" => &mut faults.fifo_io_order,
        _ => return None,
    };
    *switch = true;
    Some(())
}

/// A store with latency only.
fn quiet() -> StoreFaults {
    StoreFaults {
        latency_min_ms: 1,
        latency_max_ms: 15,
        ..StoreFaults::default()
    }
}

fn no_namespace_ops(p: &mut Params) {
    p.mix.unlink = 0;
    p.mix.rename = 0;
}

fn two_mounts_one_file(p: &mut Params, _seed: u64) {
    p.faults = quiet();
    p.shared_files = 1;
    p.private_files = 1;
    p.clients_per_mount = 2;
    p.block_size = 64;
    p.mix.write = 10;
    p.mix.fsync = 3;
    p.mix.reopen = 3;
    p.mix.truncate = 0;
    no_namespace_ops(p);
}

fn inconsistent_states(p: &mut Params, _seed: u64) {
    p.faults.p_hang = 0.0;
    p.faults.p_garbled_read = 0.05;
    p.mix.seq_read = p.mix.seq_read.max(4);
    p.mix.random_read = p.mix.random_read.max(4);
    p.mix.unlink = 4;
    p.mix.write = 10;
    p.mix.append = 3;
    p.private_files = 2;
}

fn open_racing_release(p: &mut Params, _seed: u64) {
    p.faults = quiet();
    p.faults.commit_delay_ms = 300;
    p.release_without_flush = true;
    p.mix.reopen = 8;
    p.mix.write = 8;
    p.private_files = 1;
    p.shared_files = 0;
    no_namespace_ops(p);
}

fn failing_fetches(p: &mut Params, _seed: u64) {
    p.faults.p_500 = 0.2;
    p.faults.p_hang = 0.0;
    p.max_attempts = 1;
    p.mix.seq_read = 6;
    p.mix.random_read = 6;
    p.outside_files = 1;
    no_namespace_ops(p);
}

fn stuck_storage(p: &mut Params, _seed: u64) {
    p.faults.p_hang = 0.08;
    p.parallelism = 1 + (p.parallelism % 2);
    p.clients_per_mount = 3;
}

fn failing_writes(p: &mut Params, _seed: u64) {
    p.faults = quiet();
    p.faults.p_500 = 0.1;
    p.faults.p_503 = 0.05;
    p.max_attempts = 1;
    p.mix.write = 10;
    p.mix.fsync = 4;
    no_namespace_ops(p);
}

/// Sequential readers that close soon, on a store slow enough that their
/// read-ahead is still in flight when they do.
fn closing_readers(p: &mut Params, _seed: u64) {
    p.faults = StoreFaults {
        latency_min_ms: 30,
        latency_max_ms: 120,
        ..StoreFaults::default()
    };
    p.prefetch_blocks = 4 + p.prefetch_blocks % 5;
    p.pool_buffers = 64;
    p.parallelism = 2 + p.parallelism % 3;
    p.outside_files = 2;
    p.outside_writer = false;
    p.max_blocks = 16;
    p.mix.seq_read = 10;
    p.mix.reopen = 4;
    p.mix.random_read = 2;
    p.mix.truncate = 0;
    no_namespace_ops(p);
}

/// One request in flight at a time, long runs of read-ahead and write-back
/// queued, and every read timed against the bound of a world where demand
/// work goes first (`world::demand_read_bound`). Nothing here commits
/// before the fault phase ends (no flush, no close, a pool that never
/// evicts), so the only demand work is what the clients ask for.
fn busy_background(p: &mut Params, _seed: u64) {
    p.faults = StoreFaults {
        latency_min_ms: 20,
        latency_max_ms: 30,
        ..StoreFaults::default()
    };
    p.block_size = 64;
    p.parallelism = 1;
    p.prefetch_blocks = 32;
    p.pool_buffers = 4096;
    p.max_blocks = 400;
    p.clients_per_mount = 3;
    p.ops_per_client = p.ops_per_client.max(60);
    p.private_files = 1;
    p.shared_files = 0;
    p.outside_files = 2;
    p.outside_writer = false;
    p.unmount_while_busy = false;
    p.huge_offsets = false;
    p.mix = Mix {
        seq_read: 10,
        random_read: 5,
        write: 0,
        append: 4,
        truncate: 0,
        fsync: 0,
        reopen: 0,
        dup: 0,
        unlink: 0,
        rename: 0,
    };
    p.check_read_latency = true;
}

fn pinned_pool(p: &mut Params, _seed: u64) {
    p.pool_buffers = 2;
    p.prefetch_blocks = 0;
    p.clients_per_mount = 3;
    p.faults.p_500 = 0.1;
    p.faults.p_hang = 0.0;
    p.max_attempts = 1;
    p.mix.write = 8;
}

fn exhaustion(p: &mut Params, seed: u64) {
    pinned_pool(p, seed);
    p.pool_buffers = 3;
    p.clients_per_mount = 4;
    p.parallelism = 1;
}

fn busy_unmount(p: &mut Params, _seed: u64) {
    p.unmount_while_busy = true;
    p.faults.commit_delay_ms = 200;
    p.faults.p_hang = 0.0;
}

fn huge_offsets(p: &mut Params, _seed: u64) {
    p.huge_offsets = true;
}

fn stale_bytes(p: &mut Params, _seed: u64) {
    p.faults = quiet();
    p.pool_buffers = 2 + (p.pool_buffers % 2);
    p.block_size = 64;
    p.prefetch_blocks %= 2;
    p.private_files = 2;
    p.mix.truncate = 5;
    p.mix.append = 5;
    p.mix.write = 5;
    p.mix.fsync = 3;
    p.mix.random_read = 8;
    no_namespace_ops(p);
}

fn outage(p: &mut Params, _seed: u64) {
    p.faults.p_503 = 0.5;
    p.faults.p_500 = 0.2;
    p.faults.p_hang = 0.05;
    p.fault_phase = Duration::from_secs(8);
    p.ops_per_client = p.ops_per_client.max(60);
}

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        id: "1.1",
        title: "two mounts, no shared state",
        mark: "both mounts wrote one shared file",
        fault: "shared_block_ids",
        seeds: 100,
        tweak: two_mounts_one_file,
    },
    Scenario {
        id: "1.2",
        title: "inconsistent states become errors",
        mark: "inconsistent input reported as an error",
        fault: "panic_on_internal",
        seeds: 200,
        tweak: inconsistent_states,
    },
    Scenario {
        id: "1.3",
        title: "open racing the last release",
        mark: "open while the last release's commit runs",
        fault: "open_ignores_pending_commit",
        seeds: 200,
        tweak: open_racing_release,
    },
    Scenario {
        id: "1.4",
        title: "buffer removed while pinned",
        mark: "read failed while waiting on its block",
        fault: "keep_pin_on_error",
        seeds: 100,
        tweak: failing_fetches,
    },
    Scenario {
        id: "1.5",
        title: "queue saturation with stuck storage",
        mark: "storage requests hung",
        fault: "no_request_timeout",
        seeds: 100,
        tweak: stuck_storage,
    },
    Scenario {
        id: "2.1",
        title: "sticky write errors",
        mark: "sticky write error reported",
        fault: "hide_write_errors",
        seeds: 100,
        tweak: failing_writes,
    },
    Scenario {
        id: "2.2",
        title: "cancellation on close",
        mark: "last release with read-ahead in flight",
        fault: "keep_prefetch_on_release",
        seeds: 100,
        tweak: closing_readers,
    },
    Scenario {
        id: "2.3",
        title: "all buffers pinned",
        mark: "request timed out waiting for a buffer",
        fault: "endless_buffer_wait",
        seeds: 200,
        tweak: pinned_pool,
    },
    Scenario {
        id: "2.4",
        title: "shutdown with I/O in flight",
        mark: "unmount with I/O in flight",
        fault: "early_shutdown_reply",
        seeds: 100,
        tweak: busy_unmount,
    },
    Scenario {
        id: "2.5",
        title: "huge offsets",
        mark: "huge offset write",
        fault: "skip_size_check",
        seeds: 100,
        tweak: huge_offsets,
    },
    Scenario {
        id: "2.8",
        title: "no stale bytes",
        mark: "zeros read back from a reused buffer",
        fault: "skip_fetch_zeroing",
        seeds: 200,
        tweak: stale_bytes,
    },
    Scenario {
        id: "6.2",
        title: "resource exhaustion",
        mark: "request timed out waiting for a buffer",
        fault: "endless_buffer_wait",
        seeds: 200,
        tweak: exhaustion,
    },
    Scenario {
        id: "7.3",
        title: "storage outage and recovery",
        mark: "operation succeeded after the outage",
        fault: "no_request_timeout",
        seeds: 100,
        tweak: outage,
    },
    Scenario {
        id: "7.4",
        title: "demand reads not starved",
        mark: "demand read behind queued background I/O",
        fault: "fifo_io_order",
        seeds: 100,
        tweak: busy_background,
    },
];

pub fn find(id: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.id == id)
}

/// What one scenario showed.
pub struct Verdict {
    pub failed_clean: Vec<(u64, String)>,
    pub mark_seed: Option<u64>,
    pub caught_at: Option<u64>,
}

/// Runs one scenario: all its seeds with the fault off, then seeds with the
/// fault on in batches until one fails.
pub fn run_scenario(scenario: &Scenario, jobs: usize) -> Verdict {
    let seeds: Vec<u64> = (0..scenario.seeds).collect();
    let mut failed_clean = Vec::new();
    let mut mark_seeds = BTreeSet::new();
    run_parallel(&seeds, jobs, &scenario.spec(false), |outcome| {
        if let Some(failure) = outcome.failure {
            failed_clean.push((outcome.seed, failure));
        }
        if outcome.report.marks.contains(scenario.mark) {
            mark_seeds.insert(outcome.seed);
        }
    });
    failed_clean.sort();
    let mut caught_at = None;
    let batch = (jobs.max(1) * 4) as u64;
    let mut start = 0;
    while caught_at.is_none() && start < scenario.seeds {
        let end = (start + batch).min(scenario.seeds);
        let chunk: Vec<u64> = (start..end).collect();
        let mut failing = Vec::new();
        // A seed that already fails without the fault proves nothing.
        let clean_failures: BTreeSet<u64> = failed_clean.iter().map(|(seed, _)| *seed).collect();
        run_parallel(&chunk, jobs, &scenario.spec(true), |outcome| {
            if outcome.failure.is_some() && !clean_failures.contains(&outcome.seed) {
                failing.push(outcome.seed);
            }
        });
        caught_at = failing.into_iter().min();
        start = end;
    }
    Verdict {
        failed_clean,
        mark_seed: mark_seeds.into_iter().next(),
        caught_at,
    }
}

/// Runs every scenario (or those whose id starts with `only`) and prints
/// the table; false if a seed fails with the fault off, a mark is never
/// reached, or a fault goes uncaught.
pub fn run_all(jobs: usize, only: Option<&str>, allow_known: bool) -> bool {
    let mut ok = true;
    println!(
        "{:<5} {:<38} {:>6}  {:<14} {:<28} {:<10}",
        "id", "scenario", "seeds", "mark reached", "fault switch", "caught at"
    );
    for scenario in SCENARIOS.iter().filter(|s| only.is_none_or(|o| s.id.starts_with(o))) {
        let verdict = run_scenario(scenario, jobs);
        let mark = match verdict.mark_seed {
            Some(seed) => format!("yes (seed {seed})"),
            None => "NO".into(),
        };
        let caught = match verdict.caught_at {
            Some(seed) => format!("seed {seed}"),
            None => "NOT CAUGHT".into(),
        };
        println!(
            "{:<5} {:<38} {:>6}  {:<14} {:<28} {:<10}",
            scenario.id, scenario.title, scenario.seeds, mark, scenario.fault, caught
        );
        for (seed, failure) in &verdict.failed_clean {
            println!("      FAILED without the fault, seed {seed}: {failure}");
            println!(
                "        replay: cargo sim replay --scenario {} --seed {seed} --trace",
                scenario.id
            );
        }
        let clean_ok = allow_known || verdict.failed_clean.is_empty();
        ok &= clean_ok && verdict.mark_seed.is_some() && verdict.caught_at.is_some();
    }
    println!(
        "scenarios: {}",
        if ok {
            "all marks reached, all faults caught"
        } else {
            "FAILED"
        }
    );
    ok
}
