//! The `blobcache` binary: everything happens in [`blobcache::cli`].

fn main() {
    std::process::exit(blobcache::cli::main_with_args(std::env::args_os()));
}
