//! blobcache mounted over the in-memory store with latency and a per-request
//! bandwidth cap, to measure how well the cache hides latency. The
//! `blobcache` binary has no such backend (nor should it), so this mounts
//! the library's `BlobFs` the way the binary does.

use blobcache::fuse::{self, FuseOptions};
use blobcache::shell::{BlobFs, CacheOptions};
use blobcache::storage::memory::MemoryStore;
use blobcache::storage::{BlobStore, BlockId, Condition};
use bytes::Bytes;
use futures::StreamExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};

#[derive(Debug, clap::Args)]
pub struct ShapedArgs {
    mountpoint: PathBuf,
    #[arg(long)]
    size: u64,
    #[arg(long, default_value_t = 20)]
    latency_ms: u64,
    #[arg(long, default_value_t = 25)]
    mib_per_s: u64,
    #[arg(long, default_value_t = 16)]
    block_mb: u64,
    #[arg(long, default_value_t = 1024)]
    mem_size_mb: u64,
    #[arg(long, default_value_t = 11)]
    prefetch: u32,
    #[arg(long, default_value_t = 8)]
    parallelism: u32,
}

async fn populate(store: &Arc<MemoryStore>, size: u64, block: u64) -> Result<(), String> {
    let count = size.div_ceil(block);
    let ids: Vec<BlockId> = (0..count).map(|i| BlockId(format!("{i:08}").into_bytes())).collect();
    let stages = ids.iter().enumerate().map(|(i, id)| {
        let store = store.clone();
        let start = i as u64 * block;
        let len = block.min(size - start) as usize;
        let piece: Bytes = (0..len).map(|j| (j.wrapping_add(i) as u8) ^ 0x5a).collect();
        let id = id.clone();
        async move { store.put_block("blob", &id, piece).await }
    });
    let mut results = futures::stream::iter(stages).buffer_unordered(64);
    while let Some(result) = results.next().await {
        result.map_err(|e| e.to_string())?;
    }
    store
        .put_block_list("blob", &ids, &Condition::None)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

pub fn run(args: ShapedArgs) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let block = args.block_mb << 20;
    let store = Arc::new(MemoryStore::with_shaping(
        Duration::from_millis(args.latency_ms),
        Some(args.mib_per_s << 20),
    ));
    runtime.block_on(populate(&store, args.size, block))?;
    let options = CacheOptions {
        block_size: block,
        memory_bytes: args.mem_size_mb << 20,
        prefetch_blocks: args.prefetch,
        parallelism: args.parallelism,
        ..CacheOptions::default()
    };
    let fs = Arc::new(BlobFs::new(store, options).map_err(|e| e.to_string())?);
    let fuse_options = FuseOptions {
        attribute_timeout: Duration::from_secs(120),
        entry_timeout: Duration::from_secs(120),
        negative_entry_timeout: Duration::ZERO,
        allow_other: false,
        read_only: true,
        uid: 0,
        gid: 0,
        blksize: FuseOptions::blksize_for(block),
        worker_threads: blobcache::cli::FUSE_WORKER_THREADS,
    };
    let mut mounted = fuse::mount(fs.clone(), runtime.handle().clone(), fuse_options, &args.mountpoint)
        .map_err(|e| format!("mount: {e}"))?;
    eprintln!("shaped: mounted at {}", args.mountpoint.display());
    runtime.block_on(async {
        let mut terminate = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
        let mut interrupt = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
        tokio::select! {
            biased;
            _ = &mut mounted.ended => {}
            _ = terminate.recv() => { let _ = mounted.unmount(); }
            _ = interrupt.recv() => { let _ = mounted.unmount(); }
        }
        Ok::<(), String>(())
    })?;
    let (stats, _) = fs.engine_stats();
    eprintln!(
        "shaped: bytes_fetched={} prefetches={}",
        stats.bytes_fetched, stats.prefetches
    );
    Ok(())
}
