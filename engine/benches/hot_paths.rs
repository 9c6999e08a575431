//! The engine's hot paths in nanoseconds per operation: the decision for a
//! read served from the cache, a write into a block already dirty, and a
//! read miss that must evict under memory pressure. The driver here is as
//! thin as the shell's (no invariant checks), and I/O runs against the
//! testkit's in-memory store, whose copy is part of the miss figure.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
#![allow(clippy::arithmetic_side_effects)]

use blobcache_engine::*;
use blobcache_testkit::{pattern, Store};
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};

struct Driver {
    engine: Engine,
    store: Store,
    next: u64,
    reply: Option<Result<Reply, EngineError>>,
}

impl Driver {
    fn new(config: EngineConfig) -> Driver {
        Driver {
            engine: Engine::new(config).unwrap(),
            store: Store::default(),
            next: 1,
            reply: None,
        }
    }

    /// Handles one request and runs every I/O it causes to completion.
    fn call(&mut self, request: Request) -> Reply {
        let id = RequestId(self.next);
        self.next += 1;
        self.engine.handle(Millis(0), id, request);
        while let Some(effect) = self.engine.poll_effect() {
            match effect {
                Effect::Io(command) => {
                    let completion = self.store.execute(command);
                    self.engine.complete(Millis(0), completion);
                }
                Effect::Cancel(_) => {}
                Effect::Reply { result, .. } => self.reply = Some(result),
            }
        }
        self.reply.take().expect("answered").expect("succeeded")
    }

    fn open(&mut self, path: &str, write: bool) -> HandleId {
        let mode = OpenMode {
            write,
            truncate: false,
            create: write,
            exclusive: false,
        };
        match self.call(Request::Open {
            path: path.to_string(),
            mode,
            mtime_ns: 0,
        }) {
            Reply::Opened { handle, .. } => handle,
            other => panic!("open answered {other:?}"),
        }
    }
}

fn cached_read(c: &mut Criterion) {
    const BLOCK: u64 = 1 << 20;
    let mut group = c.benchmark_group("cached_read");
    for len in [4096u32, 128 << 10] {
        let mut driver = Driver::new(EngineConfig::new(BLOCK, 16));
        driver.store.put_blob("f", pattern(8 * BLOCK as usize, 1));
        let handle = driver.open("f", false);
        for block in 0..8 {
            driver.call(Request::Read {
                handle,
                offset: block * BLOCK,
                len: BLOCK as u32,
            });
        }
        let mut offset = 0u64;
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("{}KiB", len >> 10), |b| {
            b.iter(|| {
                // Strided, so that every block of the file is touched in turn.
                offset = (offset + 3 * BLOCK / 2 + 4096) % (8 * BLOCK - u64::from(len));
                black_box(driver.call(Request::Read { handle, offset, len }))
            })
        });
    }
    group.finish();
}

fn dirty_write(c: &mut Criterion) {
    const BLOCK: u64 = 1 << 20;
    const LEN: usize = 4096;
    let mut driver = Driver::new(EngineConfig::new(BLOCK, 16));
    let handle = driver.open("w", true);
    driver.call(Request::Write {
        handle,
        offset: 0,
        data: vec![7; LEN],
        mtime_ns: 1,
    });
    let mut offset = 0u64;
    let mut group = c.benchmark_group("dirty_write");
    group.throughput(Throughput::Elements(1));
    group.bench_function("4KiB", |b| {
        b.iter_batched(
            || vec![9u8; LEN],
            |data| {
                // Never up to the block's end: a full block is staged in the background.
                offset = (offset + 12_288) % (BLOCK - 2 * LEN as u64);
                black_box(driver.call(Request::Write {
                    handle,
                    offset,
                    data,
                    mtime_ns: 2,
                }))
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn eviction(c: &mut Criterion) {
    // Small blocks, so that the copy of the fetch does not hide the engine's work.
    const BLOCK: u64 = 4096;
    const BLOCKS: u64 = 4096;
    let mut config = EngineConfig::new(BLOCK, 64);
    config.prefetch_blocks = 0;
    let mut driver = Driver::new(config);
    driver.store.put_blob("big", pattern((BLOCK * BLOCKS) as usize, 3));
    let handle = driver.open("big", false);
    let mut block = 0u64;
    let mut group = c.benchmark_group("eviction");
    group.throughput(Throughput::Elements(1));
    group.bench_function("miss_evicts_4KiB_block", |b| {
        b.iter(|| {
            // A stride coprime with the block count: every read misses and the
            // pool of 64 buffers is always full.
            block = (block + 97) % BLOCKS;
            black_box(driver.call(Request::Read {
                handle,
                offset: block * BLOCK,
                len: 512,
            }))
        })
    });
    group.finish();
    let stats = driver.engine.stats();
    assert!(stats.evictions > 0, "the pool never filled: {stats:?}");
}

criterion_group!(benches, cached_read, dirty_write, eviction);
criterion_main!(benches);
