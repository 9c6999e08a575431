//! Reference-model property test: random sequences of file operations with
//! I/O completing in random order, against plain in-memory files. After
//! every step the engine's invariants hold (checked by the harness) and
//! every read equals the model.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
#![allow(clippy::arithmetic_side_effects, clippy::unreachable)]

use blobcache_engine::*;
use blobcache_testkit::Harness;
use proptest::prelude::*;
use std::collections::BTreeMap;

const BS: u64 = 64;
const PATHS: [&str; 2] = ["a", "b"];

#[derive(Clone, Debug)]
enum Op {
    Open {
        path: usize,
        write: bool,
    },
    Read {
        handle: usize,
        offset: u64,
        len: u32,
    },
    Write {
        handle: usize,
        offset: u64,
        len: usize,
        byte: u8,
    },
    Truncate {
        handle: usize,
        size: u64,
    },
    Flush {
        handle: usize,
    },
    Release {
        handle: usize,
    },
    /// Completes some pending I/O, chosen by `pick`.
    Io {
        pick: usize,
        count: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..2usize, any::<bool>()).prop_map(|(path, write)| Op::Open { path, write }),
        4 => (0..8usize, 0..700u64, 1..200u32).prop_map(|(handle, offset, len)| Op::Read { handle, offset, len }),
        4 => (0..8usize, 0..700u64, 1..200usize, any::<u8>()).prop_map(|(handle, offset, len, byte)| Op::Write { handle, offset, len, byte }),
        1 => (0..8usize, 0..700u64).prop_map(|(handle, size)| Op::Truncate { handle, size }),
        1 => (0..8usize).prop_map(|handle| Op::Flush { handle }),
        1 => (0..8usize).prop_map(|handle| Op::Release { handle }),
        3 => (any::<usize>(), 1..6usize).prop_map(|(pick, count)| Op::Io { pick, count }),
    ]
}

struct Model {
    files: BTreeMap<String, Vec<u8>>,
}

fn run(ops: Vec<Op>, pool: usize) {
    let mut config = EngineConfig::new(BS, pool);
    config.parallelism = 3;
    config.prefetch_blocks = 2;
    config.buffer_wait_timeout_ms = u64::MAX / 4;
    let mut h = Harness::with_config(config);
    let mut model = Model { files: BTreeMap::new() };
    // Handles: (engine handle, path, writable)
    let mut handles: Vec<(HandleId, String, bool)> = vec![];
    for op in ops {
        match op {
            Op::Open { path, write } => {
                let path = PATHS[path].to_string();
                // A missing file is created, so the open is always valid.
                let write = write || !model.files.contains_key(&path);
                let h_id = h.open(&path, write, write);
                model.files.entry(path.clone()).or_default();
                handles.push((h_id, path, write));
            }
            Op::Read { handle, offset, len } => {
                let Some((id, path, _)) = handles.get(handle).cloned() else {
                    continue;
                };
                let got = h.read(id, offset, len);
                let content = &model.files[&path];
                let start = (offset as usize).min(content.len());
                let end = (offset as usize + len as usize).min(content.len());
                assert_eq!(got, content[start..end].to_vec(), "read {path} at {offset}+{len}");
            }
            Op::Write {
                handle,
                offset,
                len,
                byte,
            } => {
                let Some((id, path, true)) = handles.get(handle).cloned() else {
                    continue;
                };
                let data = vec![byte; len];
                h.write(id, offset, &data);
                let content = model.files.get_mut(&path).unwrap();
                let end = offset as usize + len;
                if content.len() < end {
                    content.resize(end, 0);
                }
                content[offset as usize..end].copy_from_slice(&data);
            }
            Op::Truncate { handle, size } => {
                let Some((id, path, true)) = handles.get(handle).cloned() else {
                    continue;
                };
                h.truncate(id, size).unwrap();
                model.files.get_mut(&path).unwrap().resize(size as usize, 0);
            }
            Op::Flush { handle } => {
                let Some((id, _, _)) = handles.get(handle).cloned() else {
                    continue;
                };
                assert_eq!(h.flush(id), Ok(Reply::Done));
            }
            Op::Release { handle } => {
                if handle < handles.len() {
                    let (id, _, _) = handles.remove(handle);
                    h.release(id);
                }
            }
            Op::Io { pick, count } => {
                for i in 0..count {
                    h.complete_at(pick.wrapping_add(i * 7));
                }
            }
        }
    }
    for (id, _, _) in handles.drain(..) {
        h.flush(id).unwrap();
        h.release(id);
    }
    h.run_io();
    for (path, content) in &model.files {
        assert_eq!(h.store.data(path), Some(&content[..]), "stored {path}");
        h.assert_layout(path, BS);
        assert_eq!(&h.read_all(path), content);
    }
    let occupancy = h.engine.occupancy();
    assert_eq!(
        (
            occupancy.pins,
            occupancy.io_pending,
            occupancy.waiting_requests,
            occupancy.open_handles
        ),
        (0, 0, 0, 0)
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_the_model(ops in proptest::collection::vec(op(), 1..60), pool in 1..6usize) {
        run(ops, pool);
    }
}

fn cases() -> u32 {
    std::env::var("BLOBCACHE_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}
