//! Helpers of the benchmark suite (`scripts/bench.sh`). Each subcommand is
//! one measuring instrument or one peer that the script cannot get from a
//! package: the raw limit of our storage backend without FUSE, the FUSE
//! ceiling, a mount over a latency-shaped in-memory store, and a proxy that
//! counts the bytes storage sends.

mod ceiling;
mod proxy;
mod raw;
mod shaped;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Development account of Azurite (published in Azurite's documentation).
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

#[derive(Debug, Parser)]
#[command(name = "blobcache-bench", about = "Instruments of the blobcache benchmark suite")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// Blob service endpoint of the Azurite account.
    #[arg(long, default_value = "http://127.0.0.1:10000/devstoreaccount1")]
    pub endpoint: String,
    #[arg(long, default_value = "bench")]
    pub container: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Creates the container with anonymous read access, so that curl can download blobs.
    Setup(Target),
    /// Uploads a file with parallel Put Block and one Put Block List; prints the timing as JSON.
    Upload {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        name: String,
        #[arg(long)]
        file: PathBuf,
        #[arg(long, default_value_t = 16)]
        block_mb: u64,
        #[arg(long, default_value_t = 16)]
        parallel: usize,
    },
    /// Downloads a blob with parallel ranged reads, discarding the data; prints the timing as JSON.
    Download {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        name: String,
        #[arg(long, default_value_t = 16)]
        range_mb: u64,
        #[arg(long, default_value_t = 16)]
        parallel: usize,
    },
    /// Server-side copy of a blob.
    Copy {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
    },
    /// Waits until a blob is committed with the given size; prints the seconds waited.
    WaitBlob {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        name: String,
        #[arg(long)]
        size: u64,
        #[arg(long, default_value_t = 600)]
        timeout_s: u64,
    },
    /// Mounts a trivial in-memory filesystem holding one file `blob`, with
    /// the FUSE settings of blobcache; serves until unmounted.
    Ceiling {
        mountpoint: PathBuf,
        #[arg(long)]
        size: u64,
    },
    /// Mounts blobcache over an in-memory store whose every request takes
    /// `latency-ms` and moves data at `mib-per-s` per request; one file `blob`.
    Shaped(shaped::ShapedArgs),
    /// Forwards TCP connections to `upstream` and keeps the byte counts in `counter-file`.
    Proxy {
        #[arg(long)]
        listen: String,
        #[arg(long)]
        upstream: String,
        #[arg(long)]
        counter_file: PathBuf,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup(target) => raw::run(raw::setup(target)),
        Command::Upload {
            target,
            name,
            file,
            block_mb,
            parallel,
        } => raw::run(raw::upload(target, name, file, block_mb, parallel)),
        Command::Download {
            target,
            name,
            range_mb,
            parallel,
        } => raw::run(raw::download(target, name, range_mb, parallel)),
        Command::Copy { target, from, to } => raw::run(raw::copy(target, from, to)),
        Command::WaitBlob {
            target,
            name,
            size,
            timeout_s,
        } => raw::run(raw::wait_blob(target, name, size, timeout_s)),
        Command::Ceiling { mountpoint, size } => ceiling::run(&mountpoint, size),
        Command::Shaped(args) => shaped::run(args),
        Command::Proxy {
            listen,
            upstream,
            counter_file,
        } => proxy::run(&listen, &upstream, &counter_file),
    };
    if let Err(message) = result {
        eprintln!("blobcache-bench: {message}");
        std::process::exit(1);
    }
}
