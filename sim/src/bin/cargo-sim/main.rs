//! `cargo sim`: runs, replays and checks seeds of the deterministic
//! simulation (see SIMULATION.md).

#[cfg(madsim)]
mod cli;

#[cfg(madsim)]
fn main() -> std::process::ExitCode {
    cli::main()
}

#[cfg(not(madsim))]
fn main() -> std::process::ExitCode {
    eprintln!("the simulation needs the madsim build: run it with `cargo sim ...` (see SIMULATION.md)");
    std::process::ExitCode::from(2)
}
