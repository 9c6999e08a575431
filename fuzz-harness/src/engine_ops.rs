//! The `engine_ops` target: one engine driven by a sequence the fuzzer
//! chooses: requests, completions of any pending command in any order (in
//! full, cut short, or failed with any error kind), clock advances, other
//! clients replacing or deleting blobs, invalidation and shutdown. The
//! testkit harness checks the engine's invariants after every step; this
//! module checks replies against a model of the files' contents and, after
//! settling all I/O, the stored blobs against the model.
//!
//! The model knows a file's content until something makes it uncertain (an
//! injected failure or short read touching it); it learns it again from the
//! store once the engine holds nothing of the file. A read is checked only
//! if no change of its file was in flight during its lifetime, since the
//! engine may order overlapping requests either way.

use arbitrary::{Arbitrary, Unstructured};
use blobcache_engine::{EngineConfig, EngineError, HandleId, IoErrorKind, OpenMode, Reply, Request};
use blobcache_testkit::{pattern, Harness};
use std::collections::BTreeMap;

const PATHS: [&str; 3] = ["a", "b", "d/c"];
/// Most operations taken from one input.
const MAX_OPS: usize = 400;
/// Files stay within this many blocks, so that inputs stay small.
const MAX_BLOCKS: u64 = 12;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum ErrorKind {
    NotFound,
    PreconditionFailed,
    Forbidden,
    Cancelled,
    TimedOut,
    Failed,
}

impl From<ErrorKind> for IoErrorKind {
    fn from(kind: ErrorKind) -> IoErrorKind {
        match kind {
            ErrorKind::NotFound => IoErrorKind::NotFound,
            ErrorKind::PreconditionFailed => IoErrorKind::PreconditionFailed,
            ErrorKind::Forbidden => IoErrorKind::Forbidden,
            ErrorKind::Cancelled => IoErrorKind::Cancelled,
            ErrorKind::TimedOut => IoErrorKind::TimedOut,
            ErrorKind::Failed => IoErrorKind::Failed,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Open {
        path: u8,
        write: bool,
        create: bool,
        truncate: bool,
        exclusive: bool,
    },
    Read {
        handle: u8,
        offset: u16,
        len: u16,
    },
    Write {
        handle: u8,
        offset: u16,
        len: u8,
        byte: u8,
    },
    Truncate {
        handle: u8,
        size: u16,
    },
    Flush {
        handle: u8,
    },
    Release {
        handle: u8,
    },
    Complete {
        pick: u8,
        count: u8,
    },
    CompleteShort {
        pick: u8,
        bytes: u8,
    },
    Fail {
        pick: u8,
        kind: ErrorKind,
    },
    Advance {
        millis: u16,
    },
    /// Another client replaces the blob (when this engine holds nothing of it).
    ExternalPut {
        path: u8,
        len: u16,
        layout: u8,
        seed: u8,
    },
    /// Another client deletes the blob (when this engine holds nothing of it).
    ExternalDelete {
        path: u8,
    },
    Invalidate {
        path: u8,
    },
    Shutdown,
}

#[derive(Arbitrary, Debug)]
struct Setup {
    block_size: u8,
    pool: u8,
    parallelism: u8,
    prefetch: u8,
    buffer_wait: u16,
    /// Blobs in storage at the start: (length, layout) per path.
    initial: [(u16, u8); 3],
}

#[derive(Clone, Debug, PartialEq)]
enum Content {
    Absent,
    Present(Vec<u8>),
    Uncertain,
}

#[derive(Debug)]
struct FileModel {
    content: Content,
    /// Changes submitted and not yet answered.
    changes_in_flight: u32,
    /// Bumped at every submission and answer of a change.
    epoch: u64,
}

#[derive(Debug)]
enum Pending {
    Open {
        path: usize,
        mode: OpenMode,
        epoch: Option<u64>,
    },
    Read {
        path: usize,
        offset: u64,
        len: u32,
        epoch: Option<u64>,
    },
    Write {
        path: usize,
        offset: u64,
        data: Vec<u8>,
    },
    Truncate {
        path: usize,
        size: u64,
    },
    Other {
        path: Option<usize>,
    },
}

impl Pending {
    fn path(&self) -> Option<usize> {
        match self {
            Pending::Open { path, .. }
            | Pending::Read { path, .. }
            | Pending::Write { path, .. }
            | Pending::Truncate { path, .. } => Some(*path),
            Pending::Other { path } => *path,
        }
    }

    fn is_change(&self) -> bool {
        match self {
            Pending::Open { mode, .. } => mode.create || mode.truncate,
            Pending::Write { .. } | Pending::Truncate { .. } => true,
            _ => false,
        }
    }
}

#[derive(Clone, Copy)]
struct OpenHandle {
    id: HandleId,
    path: usize,
    open: bool,
}

struct Run {
    h: Harness,
    block_size: u64,
    files: Vec<FileModel>,
    handles: Vec<OpenHandle>,
    requests: BTreeMap<u64, Pending>,
    trace: bool,
}

fn layout_sizes(len: u64, layout: u8, block_size: u64) -> Option<Vec<u64>> {
    match layout % 4 {
        // Put in one piece: no block list.
        0 => None,
        // Uniform, as this cache writes it.
        1 | 2 => {
            let mut sizes = vec![block_size; (len / block_size) as usize];
            if !len.is_multiple_of(block_size) {
                sizes.push(len % block_size);
            }
            Some(sizes)
        }
        // Another writer's block size.
        _ => {
            let other = u64::from(layout / 4 % 7) + 1;
            let mut sizes = vec![other; (len / other) as usize];
            if !len.is_multiple_of(other) {
                sizes.push(len % other);
            }
            Some(sizes)
        }
    }
}

impl Run {
    fn put_blob(&mut self, path: usize, len: u64, layout: u8, seed: u8) {
        let data = pattern(len as usize, seed);
        match layout_sizes(len, layout, self.block_size) {
            Some(sizes) if !sizes.is_empty() => {
                let id_len = if layout % 4 == 2 {
                    5
                } else {
                    blobcache_engine::BLOCK_ID_LEN
                };
                self.h.store.put_blocks(PATHS[path], data.clone(), &sizes, id_len);
            }
            _ => self.h.store.put_blob(PATHS[path], data.clone()),
        }
        self.files[path].content = Content::Present(data);
    }

    /// Holds nothing of `path`: no handle, request or I/O, and no cached state
    /// that outlives them.
    fn quiescent(&self, path: usize) -> bool {
        let name = PATHS[path];
        !self.handles.iter().any(|h| h.open && h.path == path)
            && !self.requests.values().any(|r| r.path() == Some(path))
            && !self.h.pending.iter().any(|c| c.path == name)
            && self.h.engine.attr(name).is_none()
            && !self.h.engine.is_open(name)
    }

    fn resync(&mut self) {
        for (path, name) in PATHS.iter().enumerate() {
            if self.files[path].content == Content::Uncertain && self.quiescent(path) {
                self.h.engine.invalidate(name);
                self.files[path].content = match self.h.store.data(name) {
                    Some(data) => Content::Present(data.to_vec()),
                    None => Content::Absent,
                };
            }
        }
    }

    fn handle(&self, pick: u8) -> (HandleId, Option<usize>) {
        let pick = usize::from(pick);
        match self.handles.get(pick % (self.handles.len() + 1)) {
            Some(handle) => (handle.id, Some(handle.path)),
            None => (HandleId(1_000_000 + pick as u64), None),
        }
    }

    fn submit(&mut self, request: Request, pending: Pending) {
        if pending.is_change() {
            if let Some(path) = pending.path() {
                // The engine applies changes of one file in the order they
                // arrive, each as a whole, so the model applies them in
                // the order of their replies.
                let file = &mut self.files[path];
                file.changes_in_flight += 1;
                file.epoch += 1;
            }
        }
        if self.trace {
            eprintln!("  submit {request:?}");
        }
        let id = self.h.submit(request);
        self.requests.insert(id, pending);
    }

    fn uncertain(&mut self, name: &str) {
        if let Some(path) = PATHS.iter().position(|p| *p == name) {
            self.files[path].content = Content::Uncertain;
        }
    }

    /// Checks and applies every reply that has arrived.
    fn take_replies(&mut self) {
        let ids: Vec<u64> = self.h.replies.keys().copied().collect();
        for id in ids {
            let Some(result) = self.h.replies.remove(&id) else {
                continue;
            };
            let Some(pending) = self.requests.remove(&id) else {
                panic!("reply to unknown request {id}: {result:?}");
            };
            if self.trace {
                eprintln!("  reply {id} to {pending:?}: {result:?}");
            }
            if pending.is_change() {
                if let Some(path) = pending.path() {
                    let file = &mut self.files[path];
                    file.changes_in_flight -= 1;
                    file.epoch += 1;
                }
            }
            self.apply(pending, result);
        }
    }

    fn apply(&mut self, pending: Pending, result: Result<Reply, EngineError>) {
        match (pending, result) {
            (Pending::Open { path, mode, epoch }, Ok(Reply::Opened { handle, size })) => {
                let file = &mut self.files[path];
                if file.content == Content::Uncertain {
                } else if mode.truncate {
                    file.content = Content::Present(vec![]);
                } else if file.content == Content::Absent {
                    assert!(mode.create, "opened missing {} without create", PATHS[path]);
                    file.content = Content::Present(vec![]);
                } else if let (Content::Present(data), false) = (&file.content, mode.create) {
                    if epoch == Some(file.epoch) {
                        assert_eq!(size, data.len() as u64, "size of {} at open", PATHS[path]);
                    }
                }
                self.handles.push(OpenHandle {
                    id: handle,
                    path,
                    open: true,
                });
            }
            (
                Pending::Read {
                    path,
                    offset,
                    len,
                    epoch,
                },
                Ok(Reply::Data(got)),
            ) => {
                let file = &self.files[path];
                if let (Content::Present(data), Some(epoch)) = (&file.content, epoch) {
                    if epoch == file.epoch {
                        let start = (offset as usize).min(data.len());
                        let end = (offset as usize + len as usize).min(data.len());
                        assert!(
                            got == data[start..end],
                            "read of {} at {offset}+{len}: got {got:?}, expected {:?}",
                            PATHS[path],
                            &data[start..end]
                        );
                    }
                }
            }
            (Pending::Write { path, offset, data }, Ok(Reply::Written(n))) => {
                assert!(n as usize <= data.len(), "wrote {n} of {} bytes", data.len());
                if let Content::Present(content) = &mut self.files[path].content {
                    let end = offset as usize + n as usize;
                    if content.len() < end {
                        content.resize(end, 0);
                    }
                    content[offset as usize..end].copy_from_slice(&data[..n as usize]);
                }
            }
            (Pending::Truncate { path, size }, Ok(Reply::Done)) => {
                if let Content::Present(content) = &mut self.files[path].content {
                    content.resize(size as usize, 0);
                }
            }
            (Pending::Other { .. }, Ok(Reply::Done)) | (_, Err(_)) => {}
            (pending, reply) => panic!("{pending:?} answered with {reply:?}"),
        }
    }

    fn step(&mut self, op: Op) {
        let block_size = self.block_size;
        let span = block_size * MAX_BLOCKS;
        match op {
            Op::Open {
                path,
                write,
                create,
                truncate,
                exclusive,
            } => {
                let path = usize::from(path) % PATHS.len();
                let mode = OpenMode {
                    write,
                    truncate: truncate && write,
                    create,
                    exclusive,
                };
                let request = Request::Open {
                    path: PATHS[path].to_owned(),
                    mode,
                    mtime_ns: 1,
                };
                let file = &self.files[path];
                let epoch = (file.changes_in_flight == 0).then_some(file.epoch);
                self.submit(request, Pending::Open { path, mode, epoch });
            }
            Op::Read { handle, offset, len } => {
                let (id, path) = self.handle(handle);
                let offset = u64::from(offset) % span;
                let len = u32::from(len) % (3 * block_size as u32 + 2);
                let request = Request::Read {
                    handle: id,
                    offset,
                    len,
                };
                let pending = match path {
                    Some(path) => {
                        let file = &self.files[path];
                        let epoch = (file.changes_in_flight == 0).then_some(file.epoch);
                        Pending::Read {
                            path,
                            offset,
                            len,
                            epoch,
                        }
                    }
                    None => Pending::Other { path: None },
                };
                self.submit(request, pending);
            }
            Op::Write {
                handle,
                offset,
                len,
                byte,
            } => {
                let (id, path) = self.handle(handle);
                let offset = u64::from(offset) % span;
                let len = usize::from(len) % (3 * block_size as usize) + 1;
                let data: Vec<u8> = (0..len).map(|i| byte.wrapping_add(i as u8)).collect();
                let request = Request::Write {
                    handle: id,
                    offset,
                    data: data.clone(),
                    mtime_ns: 2,
                };
                let pending = match path {
                    Some(path) => Pending::Write { path, offset, data },
                    None => Pending::Other { path: None },
                };
                self.submit(request, pending);
            }
            Op::Truncate { handle, size } => {
                let (id, path) = self.handle(handle);
                let size = u64::from(size) % span;
                let request = Request::Truncate {
                    handle: id,
                    size,
                    mtime_ns: 3,
                };
                let pending = match path {
                    Some(path) => Pending::Truncate { path, size },
                    None => Pending::Other { path: None },
                };
                self.submit(request, pending);
            }
            Op::Flush { handle } => {
                let (id, path) = self.handle(handle);
                self.submit(Request::Flush { handle: id }, Pending::Other { path });
            }
            Op::Release { handle } => {
                let (id, path) = self.handle(handle);
                self.submit(Request::Release { handle: id }, Pending::Other { path });
                for open in self.handles.iter_mut().filter(|h| h.id == id) {
                    open.open = false;
                }
            }
            Op::Complete { pick, count } => {
                for i in 0..=usize::from(count % 8) {
                    self.h.complete_at(usize::from(pick).wrapping_add(i * 7));
                }
            }
            Op::CompleteShort { pick, bytes } => {
                let cut = usize::from(bytes) % (block_size as usize + 1);
                if let Some((path, true)) = self.h.complete_short_at(usize::from(pick), cut) {
                    self.uncertain(&path);
                }
            }
            Op::Fail { pick, kind } => {
                if let Some(path) = self.h.fail_at(usize::from(pick), kind.into()) {
                    self.uncertain(&path);
                }
            }
            Op::Advance { millis } => self.h.advance(u64::from(millis)),
            Op::ExternalPut {
                path,
                len,
                layout,
                seed,
            } => {
                let path = usize::from(path) % PATHS.len();
                if self.quiescent(path) {
                    self.put_blob(path, u64::from(len) % span, layout, seed);
                    self.h.engine.invalidate(PATHS[path]);
                }
            }
            Op::ExternalDelete { path } => {
                let path = usize::from(path) % PATHS.len();
                if self.quiescent(path) {
                    self.h.store.blobs.remove(PATHS[path]);
                    self.h.engine.invalidate(PATHS[path]);
                    self.files[path].content = Content::Absent;
                }
            }
            Op::Invalidate { path } => self.h.engine.invalidate(PATHS[usize::from(path) % PATHS.len()]),
            Op::Shutdown => self.submit(Request::Shutdown, Pending::Other { path: None }),
        }
        self.take_replies();
        self.resync();
    }

    /// Completes every command and answers every request.
    fn settle(&mut self) {
        for _ in 0..10_000 {
            if !self.h.complete_one() {
                if self.requests.is_empty() && self.h.replies.is_empty() {
                    return;
                }
                // Only requests waiting for a buffer remain: let them time out.
                self.h.advance(1 << 40);
            }
            self.take_replies();
        }
        panic!("the engine does not settle: {:?}", self.h.engine.occupancy());
    }

    fn finish(&mut self) {
        self.settle();
        let open: Vec<OpenHandle> = self.handles.iter().filter(|h| h.open).copied().collect();
        for handle in open {
            self.submit(
                Request::Flush { handle: handle.id },
                Pending::Other {
                    path: Some(handle.path),
                },
            );
            self.submit(
                Request::Release { handle: handle.id },
                Pending::Other {
                    path: Some(handle.path),
                },
            );
        }
        self.settle();
        for (path, file) in self.files.iter().enumerate() {
            let stored = self.h.store.data(PATHS[path]);
            match &file.content {
                Content::Present(data) => {
                    assert!(
                        stored == Some(&data[..]),
                        "stored {}: {stored:?}, expected {data:?}",
                        PATHS[path]
                    );
                    // Blobs last committed by this engine have the uniform layout.
                    let engine_made = |id: &blobcache_engine::BlockId| {
                        id.0.len() == blobcache_engine::BLOCK_ID_LEN && id.0.get(2..8) == Some(&[0; 6])
                    };
                    if self.h.store.blobs[PATHS[path]]
                        .blocks
                        .iter()
                        .any(|(id, _)| engine_made(id))
                    {
                        self.h.assert_layout(PATHS[path], self.block_size);
                    }
                }
                Content::Absent => assert!(stored.is_none(), "{} should not be stored", PATHS[path]),
                Content::Uncertain => {}
            }
        }
        self.submit(Request::Shutdown, Pending::Other { path: None });
        self.settle();
        let occupancy = self.h.engine.occupancy();
        assert_eq!(
            (
                occupancy.pins,
                occupancy.io_pending,
                occupancy.waiting_requests,
                occupancy.open_handles
            ),
            (0, 0, 0, 0),
            "left over after shutdown: {occupancy:?}"
        );
    }
}

pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(crate::bounded(data));
    let Ok(setup) = Setup::arbitrary(&mut u) else { return };
    let block_size = u64::from(setup.block_size % 32) + 1;
    let mut config = EngineConfig::new(block_size, usize::from(setup.pool % 6) + 1);
    config.parallelism = usize::from(setup.parallelism % 4) + 1;
    config.prefetch_blocks = u32::from(setup.prefetch % 4);
    config.buffer_wait_timeout_ms = u64::from(setup.buffer_wait) + 1;
    config.attribute_timeout_ms = 50;
    config.max_waiting_requests = 64;
    let mut run = Run {
        h: Harness::with_config(config),
        block_size,
        files: (0..PATHS.len())
            .map(|_| FileModel {
                content: Content::Absent,
                changes_in_flight: 0,
                epoch: 0,
            })
            .collect(),
        handles: vec![],
        requests: BTreeMap::new(),
        trace: std::env::var_os("BLOBCACHE_FUZZ_TRACE").is_some(),
    };
    for (path, (len, layout)) in setup.initial.iter().enumerate() {
        if layout % 5 != 4 {
            run.put_blob(path, u64::from(*len) % (block_size * MAX_BLOCKS), *layout, path as u8);
        }
    }
    let trace = run.trace;
    if trace {
        eprintln!("block size {block_size}, {:?}", run.h.engine.config());
    }
    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        match Op::arbitrary(&mut u) {
            Ok(op) => {
                if trace {
                    eprintln!("{op:?}");
                }
                run.step(op);
            }
            Err(_) => break,
        }
    }
    run.finish();
}
