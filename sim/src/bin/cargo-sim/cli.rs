//! The commands of `cargo sim`.

use clap::{Parser, Subcommand};
use sim::runner::wall_secs;
use sim::runner::{run_one, run_parallel, RunSpec};
use sim::scenarios;
use std::io::Write;
use std::ops::Range;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "cargo sim", about = "Deterministic simulation of blobcache")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs a range of seeds.
    Run {
        /// Seeds as A..B (B excluded).
        #[arg(long, value_parser = parse_range)]
        seeds: Range<u64>,
        #[arg(long, default_value_t = default_jobs())]
        jobs: usize,
        /// Puts an audit fault back (see `cargo sim scenarios --list`).
        #[arg(long)]
        fault: Option<String>,
        /// Runs the seeds in a named scenario's world.
        #[arg(long)]
        scenario: Option<String>,
        /// Seeds listed in sim/known_failures.txt (open bugs) are reported
        /// but do not fail the run; any other failing seed does.
        #[arg(long)]
        allow_known: bool,
    },
    /// Replays one seed exactly.
    Replay {
        #[arg(long)]
        seed: u64,
        /// Prints the event trace.
        #[arg(long)]
        trace: bool,
        #[arg(long)]
        fault: Option<String>,
        #[arg(long)]
        scenario: Option<String>,
    },
    /// Runs each seed twice and compares the trace hashes.
    Determinism {
        #[arg(long, value_parser = parse_range)]
        seeds: Range<u64>,
        #[arg(long, default_value_t = default_jobs())]
        jobs: usize,
    },
    /// Runs every named scenario, with and without its audit fault.
    Scenarios {
        #[arg(long, default_value_t = default_jobs())]
        jobs: usize,
        /// Only the scenarios whose id starts with this.
        #[arg(long)]
        only: Option<String>,
        /// Failures without the fault (open bugs, listed by `run`) are
        /// reported but only unreached marks and uncaught faults fail.
        #[arg(long)]
        allow_known: bool,
    },
    /// Replays every seed of the regression list (sim/regressions.txt).
    Regressions {
        #[arg(long, default_value_t = default_jobs())]
        jobs: usize,
        /// Seeds listed in sim/known_failures.txt do not fail the run.
        #[arg(long)]
        allow_known: bool,
    },
}

fn default_jobs() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

fn parse_range(text: &str) -> Result<Range<u64>, String> {
    let (a, b) = text
        .split_once("..")
        .ok_or_else(|| format!("expected A..B, got {text}"))?;
    let a: u64 = a.trim().parse().map_err(|e| format!("{a}: {e}"))?;
    let b: u64 = b.trim().parse().map_err(|e| format!("{b}: {e}"))?;
    if b < a {
        return Err(format!("empty range {text}"));
    }
    Ok(a..b)
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run {
            seeds,
            jobs,
            fault,
            scenario,
            allow_known,
        } => spec_for(fault.as_deref(), scenario.as_deref(), false).and_then(|spec| {
            let known = if allow_known {
                known_failures(scenario.as_deref())?
            } else {
                Vec::new()
            };
            Ok(run_seeds(
                &seeds.collect::<Vec<_>>(),
                jobs,
                &spec,
                &replay_flags(&fault, &scenario),
                &known,
            ))
        }),
        Command::Replay {
            seed,
            trace,
            fault,
            scenario,
        } => spec_for(fault.as_deref(), scenario.as_deref(), trace).map(|spec| replay(seed, &spec)),
        Command::Determinism { seeds, jobs } => Ok(determinism(&seeds.collect::<Vec<_>>(), jobs)),
        Command::Scenarios {
            jobs,
            only,
            allow_known,
        } => Ok(scenarios::run_all(jobs, only.as_deref(), allow_known)),
        Command::Regressions { jobs, allow_known } => regressions(jobs, allow_known),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(message) => {
            eprintln!("cargo sim: {message}");
            ExitCode::from(2)
        }
    }
}

fn replay_flags(fault: &Option<String>, scenario: &Option<String>) -> String {
    let mut flags = String::new();
    if let Some(fault) = fault {
        flags.push_str(&format!(" --fault {fault}"));
    }
    if let Some(scenario) = scenario {
        flags.push_str(&format!(" --scenario {scenario}"));
    }
    flags
}

fn spec_for(fault: Option<&str>, scenario: Option<&str>, keep_trace: bool) -> Result<RunSpec, String> {
    let mut spec = match scenario {
        Some(id) => scenarios::find(id)
            .map(|s| s.spec(false))
            .ok_or_else(|| format!("no scenario {id}"))?,
        None => RunSpec::default(),
    };
    if let Some(fault) = fault {
        scenarios::set_fault(&mut spec.setup.faults, fault).ok_or_else(|| format!("no fault named {fault}"))?;
    }
    spec.keep_trace = keep_trace;
    Ok(spec)
}

struct Progress {
    total: usize,
    done: usize,
    failed: usize,
    started: f64,
    last: f64,
    tty: bool,
}

impl Progress {
    fn new(total: usize) -> Progress {
        Progress {
            total,
            done: 0,
            failed: 0,
            started: wall_secs(),
            last: 0.0,
            tty: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        }
    }

    fn tick(&mut self, failed: bool) {
        self.done += 1;
        self.failed += usize::from(failed);
        let interval = if self.tty { 0.1 } else { 10.0 };
        let now = wall_secs();
        if now - self.last < interval && self.done < self.total {
            return;
        }
        self.last = now;
        let width = 40;
        let filled = (self.done * width).checked_div(self.total).unwrap_or(width);
        let rate = self.done as f64 / (now - self.started).max(0.01);
        let line = format!(
            "[{}{}] {}/{} failed={} {:.0} seeds/s",
            "#".repeat(filled),
            "-".repeat(width - filled),
            self.done,
            self.total,
            self.failed,
            rate
        );
        let mut err = std::io::stderr();
        if self.tty {
            let _ = write!(err, "\r{line}");
            if self.done == self.total {
                let _ = writeln!(err);
            }
        } else {
            let _ = writeln!(err, "{line}");
        }
    }

    fn clear(&self) {
        if self.tty {
            eprint!("\r{}\r", " ".repeat(100));
        }
    }
}

/// The `SEED [SCENARIO]  # why` lines of a seed list in `sim/`.
fn seed_list(file: &str) -> Result<Vec<(u64, Option<String>)>, String> {
    let path = format!("{}/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let mut seeds = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut words = line.split_whitespace();
        let seed: u64 = words
            .next()
            .and_then(|w| w.parse().ok())
            .ok_or_else(|| format!("{path}: bad line {line}"))?;
        seeds.push((seed, words.next().map(str::to_string)));
    }
    Ok(seeds)
}

/// Seeds of `sim/known_failures.txt` for the given scenario (`None`: the
/// plain world): failures of open bugs, reported on every run.
fn known_failures(scenario: Option<&str>) -> Result<Vec<u64>, String> {
    Ok(seed_list("known_failures.txt")?
        .into_iter()
        .filter(|(_, s)| s.as_deref() == scenario)
        .map(|(seed, _)| seed)
        .collect())
}

fn run_seeds(seeds: &[u64], jobs: usize, spec: &RunSpec, flags: &str, known: &[u64]) -> bool {
    let started = wall_secs();
    let mut progress = Progress::new(seeds.len());
    let mut failed = Vec::new();
    let mut sim_ms: u64 = 0;
    run_parallel(seeds, jobs, spec, |outcome| {
        sim_ms = sim_ms.saturating_add(outcome.sim_ms);
        if let Some(failure) = &outcome.failure {
            progress.clear();
            println!("FAILED seed {}: {failure}", outcome.seed);
            println!("  replay: cargo sim replay --seed {}{flags} --trace", outcome.seed);
            failed.push(outcome.seed);
        }
        progress.tick(outcome.failure.is_some());
    });
    failed.sort_unstable();
    if !failed.is_empty() {
        println!("failing seeds: {failed:?}");
    }
    let (known_failed, new_failed): (Vec<u64>, Vec<u64>) = failed.iter().partition(|seed| known.contains(seed));
    if !known_failed.is_empty() {
        println!(
            "known failures (open bugs, sim/known_failures.txt): {} {known_failed:?}",
            known_failed.len()
        );
    }
    let wall = wall_secs() - started;
    println!(
        "seeds={} failed={} sim_secs={:.0} wall_secs={:.2}",
        seeds.len(),
        failed.len(),
        sim_ms as f64 / 1000.0,
        wall
    );
    new_failed.is_empty()
}

fn replay(seed: u64, spec: &RunSpec) -> bool {
    let outcome = run_one(seed, spec);
    for line in &outcome.trace {
        println!("{line}");
    }
    println!("params: {:?}", sim::runner::params_for(seed, spec));
    println!(
        "seed {seed}: {} events, trace hash {:016x}, {:.1} simulated s in {:.2} wall s, marks {:?}",
        outcome.events,
        outcome.trace_hash,
        outcome.sim_ms as f64 / 1000.0,
        outcome.wall.as_secs_f64(),
        outcome.report.marks
    );
    match outcome.failure {
        Some(failure) => {
            println!("FAILED: {failure}");
            false
        }
        None => {
            println!("passed");
            true
        }
    }
}

fn determinism(seeds: &[u64], jobs: usize) -> bool {
    let spec = RunSpec::default();
    let doubled: Vec<u64> = seeds.iter().flat_map(|s| [*s, *s]).collect();
    let mut hashes: std::collections::BTreeMap<u64, Vec<u64>> = std::collections::BTreeMap::new();
    let mut progress = Progress::new(doubled.len());
    run_parallel(&doubled, jobs, &spec, |outcome| {
        hashes.entry(outcome.seed).or_default().push(outcome.trace_hash);
        progress.tick(false);
    });
    let mut ok = true;
    for (seed, runs) in &hashes {
        if runs.len() != 2 || runs[0] != runs[1] {
            ok = false;
            println!("NONDETERMINISTIC seed {seed}: trace hashes {runs:x?}");
            println!("  compare: cargo sim replay --seed {seed} --trace (twice, then diff)");
        }
    }
    println!(
        "determinism: {} seeds run twice, {}",
        seeds.len(),
        if ok { "all traces identical" } else { "MISMATCH" }
    );
    ok
}

fn regressions(jobs: usize, allow_known: bool) -> Result<bool, String> {
    let mut ok = true;
    let mut groups: std::collections::BTreeMap<String, Vec<u64>> = std::collections::BTreeMap::new();
    for (seed, scenario) in seed_list("regressions.txt")? {
        groups.entry(scenario.unwrap_or_default()).or_default().push(seed);
    }
    for (scenario, seeds) in groups {
        let name = (!scenario.is_empty()).then_some(scenario.clone());
        let spec = spec_for(None, name.as_deref(), false)?;
        println!(
            "regressions{}: {} seeds",
            if scenario.is_empty() {
                String::new()
            } else {
                format!(" ({scenario})")
            },
            seeds.len()
        );
        let known = if allow_known {
            known_failures(name.as_deref())?
        } else {
            Vec::new()
        };
        ok &= run_seeds(&seeds, jobs, &spec, &replay_flags(&None, &name), &known);
    }
    Ok(ok)
}
