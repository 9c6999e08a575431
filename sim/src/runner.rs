//! Runs seeds: each on a fresh OS thread with a fresh madsim runtime seeded
//! with it (std's per-thread hash keys would otherwise leak one run's state
//! into the next), catching panics, which are failures like any other.

use crate::params::Params;
use crate::trace::Trace;
use crate::world::{self, Report, RunSetup};
use std::cell::RefCell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Once};
use std::time::Duration;

/// A run may not take more simulated time than this: the fault phase, the
/// liveness bound and the unmount bound, with room to spare.
const SIM_TIME_LIMIT: Duration = Duration::from_secs(3600);

/// How a seed is run.
#[derive(Clone, Default)]
pub struct RunSpec {
    pub setup: RunSetup,
    /// Adjusts the swarm's draw (named scenarios pin parts of the world).
    pub tweak: Option<fn(&mut Params, u64)>,
    pub keep_trace: bool,
}

#[derive(Debug, Default)]
pub struct Outcome {
    pub seed: u64,
    pub failure: Option<String>,
    pub trace_hash: u64,
    pub events: u64,
    pub sim_ms: u64,
    pub wall: Duration,
    pub report: Report,
    pub trace: Vec<String>,
}

thread_local! {
    static PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

fn install_panic_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        panic::set_hook(Box::new(|info| {
            let message = match info.payload().downcast_ref::<&str>() {
                Some(s) => (*s).to_string(),
                None => info.payload().downcast_ref::<String>().cloned().unwrap_or_default(),
            };
            let location = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            PANIC.with(|p| *p.borrow_mut() = Some(format!("panic: {message}{location}")));
        }));
    });
}

/// Wall-clock seconds since boot. The madsim build virtualises
/// `std::time` and the libc clock functions even outside a runtime, so the
/// runner reads the kernel's uptime instead (10 ms resolution).
pub fn wall_secs() -> f64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|text| text.split_whitespace().next().and_then(|s| s.parse().ok()))
        .unwrap_or(0.0)
}

pub fn params_for(seed: u64, spec: &RunSpec) -> Params {
    let mut params = Params::from_seed(seed);
    if let Some(tweak) = spec.tweak {
        tweak(&mut params, seed);
    }
    params
}

/// Runs one seed to its end.
pub fn run_one(seed: u64, spec: &RunSpec) -> Outcome {
    install_panic_hook();
    let spec = spec.clone();
    let started = wall_secs();
    let thread = std::thread::Builder::new()
        .name(format!("seed-{seed}"))
        .stack_size(16 << 20)
        .spawn(move || {
            let params = params_for(seed, &spec);
            let trace = Trace::new(spec.keep_trace);
            let mut runtime = madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
            runtime.set_time_limit(SIM_TIME_LIMIT);
            let setup = spec.setup.clone();
            let run_trace = trace.clone();
            let result = panic::catch_unwind(AssertUnwindSafe(|| {
                runtime.block_on(world::run(seed, params, setup, run_trace))
            }));
            let report = match result {
                Ok(report) => report,
                Err(_) => Report {
                    failure: Some(PANIC.with(|p| p.borrow_mut().take()).unwrap_or_else(|| "panic".into())),
                    ..Report::default()
                },
            };
            // Dropping a runtime with tasks still parked can itself panic.
            let _ = panic::catch_unwind(AssertUnwindSafe(move || drop(runtime)));
            (report, trace.hash(), trace.events(), trace.take_lines())
        });
    let (report, trace_hash, events, trace) = match thread.map(|t| t.join()) {
        Ok(Ok(done)) => done,
        Ok(Err(_)) => (
            Report {
                failure: Some("the run's thread panicked".into()),
                ..Report::default()
            },
            0,
            0,
            Vec::new(),
        ),
        Err(error) => (
            Report {
                failure: Some(format!("could not start a thread: {error}")),
                ..Report::default()
            },
            0,
            0,
            Vec::new(),
        ),
    };
    Outcome {
        seed,
        failure: report.failure.clone(),
        trace_hash,
        events,
        sim_ms: report.sim_ms,
        wall: Duration::from_secs_f64((wall_secs() - started).max(0.0)),
        report,
        trace,
    }
}

/// Runs seeds on `jobs` threads; results come back in completion order.
pub fn run_parallel(seeds: &[u64], jobs: usize, spec: &RunSpec, mut each: impl FnMut(Outcome)) {
    let next = AtomicU64::new(0);
    let (sender, receiver) = mpsc::channel();
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            let sender = sender.clone();
            let next = &next;
            scope.spawn(move || loop {
                let index = next.fetch_add(1, Ordering::SeqCst) as usize;
                let Some(seed) = seeds.get(index) else {
                    break;
                };
                if sender.send(run_one(*seed, spec)).is_err() {
                    break;
                }
            });
        }
        drop(sender);
        for outcome in receiver {
            each(outcome);
        }
    });
}
