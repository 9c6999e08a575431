//! Every fuzz target as a property test: first the committed seed corpus and
//! the minimised inputs of past crashes (`fuzz/seeds/TARGET`,
//! `fuzz/regressions/TARGET`), then random inputs from bolero.
//! `BLOBCACHE_FUZZ_ITERATIONS` changes the number of random inputs.

use blobcache_fuzz_harness as harness;
use std::path::Path;

const DEFAULT_ITERATIONS: usize = 10_000;
/// Longest random input; the fuzz targets default to 4096 bytes too.
const MAX_LEN: usize = 4096;

fn iterations(default: usize) -> usize {
    std::env::var("BLOBCACHE_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn replay_saved(target: &str, run: fn(&[u8])) {
    let fuzz_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    for kind in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz_dir.join(kind).join(target)) else {
            continue;
        };
        let mut paths: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            eprintln!("replaying {}", path.display());
            run(&data);
        }
    }
}

fn check(target: &str, run: fn(&[u8]), default_iterations: usize) {
    replay_saved(target, run);
    // Long enough inputs for hundreds of operations; bolero's default
    // byte vectors are too short to reach deep states.
    bolero::check!()
        .with_generator(bolero::produce::<Vec<u8>>().with().len(0usize..=MAX_LEN))
        .with_iterations(iterations(default_iterations))
        .for_each(|data: &Vec<u8>| {
            if std::env::var_os("SAVE").is_some() {
                let _ = std::fs::write("/tmp/last_input", data);
            }
            run(data)
        });
}

#[test]
fn config() {
    check("config", harness::config::run, DEFAULT_ITERATIONS);
}

#[test]
fn parsers() {
    check("parsers", harness::parsers::run, DEFAULT_ITERATIONS);
}

#[test]
fn block_list() {
    check("block_list", harness::block_list::run, DEFAULT_ITERATIONS);
}

#[test]
fn engine_ops() {
    check("engine_ops", harness::engine_ops::run, DEFAULT_ITERATIONS);
}

#[test]
fn shell_ops() {
    check("shell_ops", harness::shell_ops::run, DEFAULT_ITERATIONS);
}
