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
                // A write may end short (POSIX allows it); callers write the
                // rest, as write_all does.
                let mut done = 0;
                while done < len {
                    let reply = h.call(Request::Write {
                        handle: id,
                        offset: offset + done as u64,
                        data: data[done..].to_vec(),
                        mtime_ns: 2,
                    });
                    match reply {
                        Ok(Reply::Written(n)) if n > 0 && n as usize <= len - done => done += n as usize,
                        other => panic!("write {path} at {}: {other:?}", offset + done as u64),
                    }
                }
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
        .unwrap_or(10_000)
}

/// Operations with I/O that may fail in any way.
#[derive(Clone, Debug)]
enum FaultyOp {
    Op(Op),
    /// Fails the pending command picked by `pick` with `kind`.
    Fail {
        pick: usize,
        kind: u8,
    },
}

fn faulty_op() -> impl Strategy<Value = FaultyOp> {
    prop_oneof![
        8 => op().prop_map(FaultyOp::Op),
        1 => (any::<usize>(), 0..5u8).prop_map(|(pick, kind)| FaultyOp::Fail { pick, kind }),
    ]
}

fn error_kind(kind: u8) -> IoErrorKind {
    match kind {
        0 => IoErrorKind::NotFound,
        1 => IoErrorKind::PreconditionFailed,
        2 => IoErrorKind::Forbidden,
        3 => IoErrorKind::TimedOut,
        _ => IoErrorKind::Failed,
    }
}

/// With failures injected anywhere, the engine never panics, its invariants
/// hold after every step, every request is answered, files untouched by a
/// failure still match the model, and nothing is left behind at the end.
fn run_with_faults(ops: Vec<FaultyOp>, pool: usize) {
    let mut config = EngineConfig::new(BS, pool);
    config.parallelism = 3;
    config.buffer_wait_timeout_ms = u64::MAX / 4;
    let mut h = Harness::with_config(config);
    let mut model: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut uncertain: std::collections::BTreeSet<String> = Default::default();
    let mut handles: Vec<(HandleId, String, bool)> = vec![];
    for op in ops {
        let op = match op {
            FaultyOp::Fail { pick, kind } => {
                if !h.pending.is_empty() {
                    let index = pick % h.pending.len();
                    let path = h.pending[index].path.clone();
                    h.pending.rotate_left(index);
                    h.fail_one(error_kind(kind));
                    uncertain.insert(path);
                }
                continue;
            }
            FaultyOp::Op(op) => op,
        };
        match op {
            Op::Open { path, write } => {
                let path = PATHS[path].to_string();
                let write = write || !model.contains_key(&path);
                let mode = OpenMode {
                    write,
                    truncate: false,
                    create: write,
                    exclusive: false,
                };
                if let Ok(Reply::Opened { handle, .. }) = h.call(Request::Open {
                    path: path.clone(),
                    mode,
                    mtime_ns: 1,
                }) {
                    model.entry(path.clone()).or_default();
                    handles.push((handle, path, write));
                } else {
                    uncertain.insert(path);
                }
            }
            Op::Read { handle, offset, len } => {
                let Some((id, path, _)) = handles.get(handle).cloned() else {
                    continue;
                };
                let result = h.call(Request::Read {
                    handle: id,
                    offset,
                    len,
                });
                if uncertain.contains(&path) {
                    continue;
                }
                let content = &model[&path];
                let start = (offset as usize).min(content.len());
                let end = (offset as usize + len as usize).min(content.len());
                assert_eq!(result, Ok(Reply::Data(content[start..end].to_vec())), "read {path}");
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
                let result = h.call(Request::Write {
                    handle: id,
                    offset,
                    data: data.clone(),
                    mtime_ns: 2,
                });
                if result != Ok(Reply::Written(len as u32)) {
                    uncertain.insert(path.clone());
                }
                let content = model.get_mut(&path).unwrap();
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
                if h.call(Request::Truncate {
                    handle: id,
                    size,
                    mtime_ns: 3,
                }) != Ok(Reply::Done)
                {
                    uncertain.insert(path.clone());
                }
                model.get_mut(&path).unwrap().resize(size as usize, 0);
            }
            Op::Flush { handle } => {
                let Some((id, path, _)) = handles.get(handle).cloned() else {
                    continue;
                };
                if h.flush(id) != Ok(Reply::Done) {
                    uncertain.insert(path);
                }
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
    for (id, path, _) in handles.drain(..) {
        if h.flush(id) != Ok(Reply::Done) {
            uncertain.insert(path);
        }
        h.release(id);
    }
    h.run_io();
    for (path, content) in &model {
        if uncertain.contains(path) {
            continue;
        }
        assert_eq!(h.store.data(path), Some(&content[..]), "stored {path}");
        h.assert_layout(path, BS);
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
    assert_eq!(occupancy.buffers_free + cached(&h), occupancy.buffers_allocated);
}

fn cached(h: &Harness) -> usize {
    let occupancy = h.engine.occupancy();
    occupancy.buffers_allocated - occupancy.buffers_free
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn engine_survives_faults(ops in proptest::collection::vec(faulty_op(), 1..60), pool in 1..6usize) {
        run_with_faults(ops, pool);
    }
}
