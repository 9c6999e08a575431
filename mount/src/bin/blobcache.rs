//! The `blobcache` binary: everything happens in [`blobcache::cli`].

// Every FUSE write arrives as a fresh 1 MiB buffer; mimalloc reuses freed
// memory instead of mapping and faulting in new pages for each request.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(blobcache::cli::main_with_args(std::env::args_os()));
}
