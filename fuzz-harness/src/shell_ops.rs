//! The `shell_ops` target: filesystem operations through [`BlobFs`] over the
//! in-memory backend, on a current-thread tokio runtime with its clock
//! paused, with storage failures injected where the input says (before or
//! after the request takes effect). The engine's invariants are checked
//! after every operation. Until a failure is injected, every answer is
//! checked against a model of the files, and at the end the files must read
//! back, through a fresh cache over the same store, as the model says.
//!
//! Retries are off (`max_attempts` 1) so that no real time is spent
//! sleeping between attempts.

use arbitrary::{Arbitrary, Unstructured};
use async_trait::async_trait;
use blobcache::storage::memory::MemoryStore;
use blobcache::storage::{
    BlobProperties, BlobStore, BlockId, CommittedBlock, Condition, ETag, Listing, StorageError, StorageResult,
};
use blobcache::{BlobFs, CacheOptions, FileHandle, OpenOptions};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const FILES: [&str; 4] = ["a", "b", "d/x", "d/y"];
const DIRS: [&str; 3] = ["", "d", "e"];
const MAX_OPS: usize = 64;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Fault {
    NotFound,
    PreconditionFailed,
    Forbidden,
    Conflict,
    Throttled,
    Transient,
    Timeout,
    Other,
}

impl Fault {
    fn error(self) -> StorageError {
        let message = "injected".to_owned();
        match self {
            Fault::NotFound => StorageError::NotFound(message),
            Fault::PreconditionFailed => StorageError::PreconditionFailed(message),
            Fault::Forbidden => StorageError::Forbidden(message),
            Fault::Conflict => StorageError::Conflict(message),
            Fault::Throttled => StorageError::Throttled {
                message,
                retry_after: None,
            },
            Fault::Transient => StorageError::Transient(message),
            Fault::Timeout => StorageError::Timeout,
            Fault::Other => StorageError::Other(message),
        }
    }
}

/// Calls made so far, and failures armed by call number: (failure, whether
/// the call takes effect first).
type Faults = (u64, BTreeMap<u64, (Fault, bool)>);

/// A memory store that fails the storage calls it was told to.
struct FaultyStore {
    inner: MemoryStore,
    faults: Mutex<Faults>,
    injected: AtomicBool,
    /// The last operation waited as long as the cache's buffer timeout.
    slow: AtomicBool,
}

impl FaultyStore {
    fn arm(&self, after: u8, fault: Fault, after_effect: bool) {
        let mut faults = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        let at = faults.0 + u64::from(after % 8);
        faults.1.insert(at, (fault, after_effect));
    }

    fn disarm(&self) {
        self.faults.lock().unwrap_or_else(|e| e.into_inner()).1.clear();
    }

    fn next_fault(&self) -> Option<(Fault, bool)> {
        let mut faults = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        let call = faults.0;
        faults.0 += 1;
        let fault = faults.1.remove(&call);
        if let Some((fault, after_effect)) = fault {
            self.injected.store(true, Ordering::SeqCst);
            if std::env::var_os("BLOBCACHE_FUZZ_TRACE").is_some() {
                eprintln!("  storage call {call} fails with {fault:?} (after taking effect: {after_effect})");
            }
        }
        fault
    }

    async fn call<T>(&self, operation: impl std::future::Future<Output = StorageResult<T>>) -> StorageResult<T> {
        match self.next_fault() {
            None => operation.await,
            Some((fault, false)) => Err(fault.error()),
            Some((fault, true)) => {
                let _ = operation.await;
                Err(fault.error())
            }
        }
    }
}

#[async_trait]
impl BlobStore for FaultyStore {
    fn describe(&self) -> String {
        "memory store with injected failures".to_owned()
    }
    async fn get_properties(&self, name: &str) -> StorageResult<BlobProperties> {
        self.call(self.inner.get_properties(name)).await
    }
    async fn get_block_list(&self, name: &str) -> StorageResult<Vec<CommittedBlock>> {
        self.call(self.inner.get_block_list(name)).await
    }
    async fn read_range(&self, name: &str, offset: u64, buf: &mut [u8], condition: &Condition) -> StorageResult<usize> {
        self.call(self.inner.read_range(name, offset, buf, condition)).await
    }
    async fn put_block(&self, name: &str, id: &BlockId, data: Bytes) -> StorageResult<()> {
        self.call(self.inner.put_block(name, id, data)).await
    }
    async fn put_block_list(&self, name: &str, blocks: &[BlockId], condition: &Condition) -> StorageResult<ETag> {
        self.call(self.inner.put_block_list(name, blocks, condition)).await
    }
    async fn put_blob(
        &self,
        name: &str,
        data: Bytes,
        is_dir_marker: bool,
        condition: &Condition,
    ) -> StorageResult<ETag> {
        self.call(self.inner.put_blob(name, data, is_dir_marker, condition))
            .await
    }
    async fn delete_blob(&self, name: &str) -> StorageResult<()> {
        self.call(self.inner.delete_blob(name)).await
    }
    async fn list(&self, prefix: &str) -> StorageResult<Listing> {
        self.call(self.inner.list(prefix)).await
    }
    async fn copy_blob(&self, from: &str, to: &str) -> StorageResult<ETag> {
        self.call(self.inner.copy_blob(from, to)).await
    }
    async fn check_access(&self) -> StorageResult<()> {
        self.call(self.inner.check_access()).await
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Create {
        file: u8,
        exclusive: bool,
    },
    Open {
        file: u8,
        write: bool,
        truncate: bool,
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
    Flush {
        handle: u8,
    },
    Fsync {
        handle: u8,
    },
    Release {
        handle: u8,
    },
    Truncate {
        file: u8,
        handle: Option<u8>,
        size: u16,
    },
    Getattr {
        file: u8,
    },
    Readdir {
        dir: u8,
    },
    Mkdir {
        dir: u8,
    },
    Rmdir {
        dir: u8,
    },
    Unlink {
        file: u8,
    },
    Rename {
        from: u8,
        to: u8,
    },
    Fail {
        after: u8,
        fault: Fault,
        after_effect: bool,
    },
}

/// One open file as the model sees it; handles share it, and it outlives
/// its name after an unlink or rename.
type Content = Arc<Mutex<Vec<u8>>>;

struct Model {
    names: BTreeMap<&'static str, Content>,
    handles: Vec<(FileHandle, Content, bool)>,
}

fn content(file: &Content) -> Vec<u8> {
    file.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

fn options(block_size: u64, buffers: u64) -> CacheOptions {
    CacheOptions {
        block_size,
        memory_bytes: block_size * buffers,
        prefetch_blocks: 2,
        parallelism: 4,
        max_attempts: 1,
        ..CacheOptions::default()
    }
}

/// How long, in the runtime's paused time, one operation may take before
/// it counts as hung. Time only moves when every task waits, so a wait for
/// a timeout costs no real time.
const HUNG: Duration = Duration::from_secs(600);
/// The cache's wait for a free buffer: an operation this slow ran into it.
const BUFFER_WAIT: Duration = Duration::from_secs(60);

/// The operation's result; panics if it hangs.
async fn timed<T: std::fmt::Debug>(store: &FaultyStore, operation: impl std::future::Future<Output = T>) -> T {
    let started = tokio::time::Instant::now();
    let result = match tokio::time::timeout(HUNG, operation).await {
        Ok(result) => result,
        Err(_) => panic!("an operation hung for {HUNG:?}"),
    };
    let took = started.elapsed();
    if took >= BUFFER_WAIT {
        store.slow.store(true, Ordering::SeqCst);
    }
    if std::env::var_os("BLOBCACHE_FUZZ_TRACE").is_some() {
        eprintln!("  -> {result:?} after {took:?}");
    }
    result
}

/// Whether a file still has a name. What is read from or written to one
/// without (unlinked, or renamed over, while open) is not checked: a block
/// of it that is not in memory cannot be fetched once its blob is gone.
fn named(model: &Model, file: &Content) -> bool {
    model.names.values().any(|named| Arc::ptr_eq(named, file))
}

/// Whether a file without a name is open. What
/// is written to it can be neither staged (there is no name to stage it
/// under) nor evicted until its last handle closes, so it may come to hold
/// the whole pool, and then every request that needs a buffer waits for the
/// buffer timeout.
fn orphan_open(model: &Model) -> bool {
    model.handles.iter().any(|(_, file, _)| !named(model, file))
}

async fn run_ops(store: Arc<FaultyStore>, block_size: u64, buffers: u64, ops: Vec<Op>) {
    let fs = match BlobFs::new(store.clone(), options(block_size, buffers)) {
        Ok(fs) => fs,
        Err(error) => panic!("cache over a memory store: {error}"),
    };
    let mut model = Model {
        names: BTreeMap::new(),
        handles: vec![],
    };
    // The model follows the files until a failure is injected, or until
    // an operation runs out of buffers held by a file without a name.
    let lost = AtomicBool::new(false);
    let starved = AtomicBool::new(false);
    let checked = |store: &FaultyStore| {
        let followed = !store.injected.load(Ordering::SeqCst) && !lost.load(Ordering::SeqCst);
        if followed && store.slow.swap(false, Ordering::SeqCst) {
            assert!(
                starved.load(Ordering::SeqCst),
                "an operation waited for a buffer for {BUFFER_WAIT:?} with no failure injected"
            );
            lost.store(true, Ordering::SeqCst);
            return false;
        }
        followed
    };
    let span = block_size * 10;
    let trace = std::env::var_os("BLOBCACHE_FUZZ_TRACE").is_some();
    if trace {
        eprintln!("block size {block_size}, {buffers} buffers");
    }
    for op in ops {
        if trace {
            eprintln!("{op:?}");
            eprintln!("  {:?}", fs.engine_stats().1);
        }
        let pick_handle = |model: &Model, pick: u8| {
            model
                .handles
                .get(usize::from(pick) % (model.handles.len() + 1))
                .cloned()
        };
        starved.store(orphan_open(&model), Ordering::SeqCst);
        match op {
            Op::Create { file, exclusive } => {
                let name = FILES[usize::from(file) % FILES.len()];
                let result = timed(&store, fs.create(name, exclusive)).await;
                if checked(&store) {
                    match (&result, model.names.get(name)) {
                        (Ok((handle, attr)), existing) => {
                            assert!(
                                !(exclusive && existing.is_some()),
                                "exclusive create of existing {name}"
                            );
                            let file = existing.cloned().unwrap_or_default();
                            assert_eq!(attr.size, content(&file).len() as u64, "size of created {name}");
                            model.names.insert(name, file.clone());
                            model.handles.push((*handle, file, true));
                        }
                        (Err(error), existing) => {
                            assert!(exclusive && existing.is_some(), "create {name}: {error}")
                        }
                    }
                }
            }
            Op::Open { file, write, truncate } => {
                let name = FILES[usize::from(file) % FILES.len()];
                let options = OpenOptions {
                    read: true,
                    write,
                    truncate: truncate && write,
                };
                let result = timed(&store, fs.open(name, options)).await;
                if checked(&store) {
                    match (&result, model.names.get(name)) {
                        (Ok(handle), Some(file)) => {
                            if options.truncate {
                                file.lock().unwrap_or_else(|e| e.into_inner()).clear();
                            }
                            model.handles.push((*handle, file.clone(), write));
                        }
                        (Err(_), None) => {}
                        (result, _) => panic!("open {name}: {result:?}"),
                    }
                }
            }
            Op::Read { handle, offset, len } => {
                let Some((handle, file, _)) = pick_handle(&model, handle) else {
                    continue;
                };
                let offset = u64::from(offset) % span;
                let result = timed(
                    &store,
                    fs.read(handle, offset, u32::from(len) % (3 * block_size as u32)),
                )
                .await;
                if checked(&store) && named(&model, &file) {
                    let data = content(&file);
                    let start = (offset as usize).min(data.len());
                    let end = (offset as usize + usize::from(len) % (3 * block_size as usize)).min(data.len());
                    match result {
                        Ok(got) => assert!(
                            got == data[start..end],
                            "read at {offset}: {got:?} != {:?}",
                            &data[start..end]
                        ),
                        Err(error) => panic!("read: {error}"),
                    }
                }
            }
            Op::Write {
                handle,
                offset,
                len,
                byte,
            } => {
                let Some((handle, file, writable)) = pick_handle(&model, handle) else {
                    continue;
                };
                let offset = u64::from(offset) % span;
                let data: Vec<u8> = (0..=len % 40).map(|i| byte.wrapping_add(i)).collect();
                let result = timed(&store, fs.write(handle, offset, data.clone())).await;
                if checked(&store) && named(&model, &file) {
                    match result {
                        Ok(n) => {
                            // A write may end short (before a block that must
                            // be committed first), never empty.
                            let n = n as usize;
                            assert!(
                                writable && n > 0 && n <= data.len(),
                                "write of {} bytes: {n}",
                                data.len()
                            );
                            let mut content = file.lock().unwrap_or_else(|e| e.into_inner());
                            let end = offset as usize + n;
                            if content.len() < end {
                                content.resize(end, 0);
                            }
                            content[offset as usize..end].copy_from_slice(&data[..n]);
                        }
                        Err(error) => assert!(!writable, "write: {error}"),
                    }
                }
            }
            Op::Flush { handle } | Op::Fsync { handle } => {
                let Some((handle, _, _)) = pick_handle(&model, handle) else {
                    continue;
                };
                let result = timed(&store, fs.flush(handle)).await;
                if checked(&store) {
                    assert!(result.is_ok(), "flush: {result:?}");
                }
            }
            Op::Release { handle } => {
                let pick = usize::from(handle) % (model.handles.len() + 1);
                if pick < model.handles.len() {
                    let (handle, _, _) = model.handles.remove(pick);
                    let result = timed(&store, fs.release(handle)).await;
                    if checked(&store) {
                        assert!(result.is_ok(), "release: {result:?}");
                    }
                }
            }
            Op::Truncate { file, handle, size } => {
                let size = u64::from(size) % span;
                let handle = handle.and_then(|h| pick_handle(&model, h));
                // The kernel names the handle's own file; an unlinked one keeps its last name.
                let own_name = handle
                    .as_ref()
                    .map(|(_, file, _)| model.names.iter().find(|(_, f)| Arc::ptr_eq(f, file)).map(|(n, _)| *n));
                let name = match own_name {
                    Some(Some(name)) => name,
                    Some(None) => continue,
                    None => FILES[usize::from(file) % FILES.len()],
                };
                let through = handle.as_ref().map(|h| h.0);
                let result = timed(&store, fs.truncate(name, through, size)).await;
                if checked(&store) {
                    let target = match &handle {
                        Some((_, file, true)) => Some(file.clone()),
                        Some((_, _, false)) => None,
                        None => model.names.get(name).cloned(),
                    };
                    match (result, target) {
                        (Ok(_), Some(file)) => file.lock().unwrap_or_else(|e| e.into_inner()).resize(size as usize, 0),
                        (Err(_), None) => {}
                        (Ok(_), None) if handle.is_some() => {}
                        (result, target) => panic!("truncate {name} ({handle:?}): {result:?}, model {target:?}"),
                    }
                }
            }
            Op::Getattr { file } => {
                let name = FILES[usize::from(file) % FILES.len()];
                let result = timed(&store, fs.getattr(name)).await;
                if checked(&store) {
                    match (result, model.names.get(name)) {
                        (Ok(attr), Some(file)) => assert_eq!(attr.size, content(file).len() as u64, "size of {name}"),
                        (Err(_), None) => {}
                        (result, _) => panic!("getattr {name}: {result:?}"),
                    }
                }
            }
            Op::Readdir { dir } => {
                let dir = DIRS[usize::from(dir) % DIRS.len()];
                if let (Ok(entries), true) = (timed(&store, fs.readdir(dir)).await, checked(&store)) {
                    for name in model.names.keys() {
                        if BlobFs::parent_of(name) == dir {
                            let base = name.rsplit('/').next().unwrap_or_default();
                            assert!(
                                entries.iter().any(|e| e.name == base),
                                "{name} missing from {dir:?}: {entries:?}"
                            );
                        }
                    }
                }
            }
            Op::Mkdir { dir } => {
                let _ = timed(&store, fs.mkdir(DIRS[usize::from(dir) % DIRS.len()])).await;
            }
            Op::Rmdir { dir } => {
                let dir = DIRS[usize::from(dir) % DIRS.len()];
                let result = timed(&store, fs.rmdir(dir)).await;
                if checked(&store) && result.is_ok() {
                    assert!(
                        !model.names.keys().any(|n| BlobFs::parent_of(n) == dir),
                        "removed non-empty {dir:?}"
                    );
                }
            }
            Op::Unlink { file } => {
                let name = FILES[usize::from(file) % FILES.len()];
                let result = timed(&store, fs.unlink(name)).await;
                if checked(&store) {
                    match (result, model.names.remove(name)) {
                        (Ok(()), Some(_)) | (Err(_), None) => {}
                        (result, _) => panic!("unlink {name}: {result:?}"),
                    }
                }
            }
            Op::Rename { from, to } => {
                let from = FILES[usize::from(from) % FILES.len()];
                let to = FILES[usize::from(to) % FILES.len()];
                let result = timed(&store, fs.rename(from, to)).await;
                // Renaming a name onto itself answers Ok without a look-up.
                if checked(&store) && from != to {
                    match (result, model.names.contains_key(from)) {
                        (Ok(()), true) => {
                            if let Some(file) = model.names.remove(from) {
                                model.names.insert(to, file);
                            }
                        }
                        (Err(_), false) => {}
                        (result, _) => panic!("rename {from} to {to}: {result:?}"),
                    }
                }
            }
            Op::Fail {
                after,
                fault,
                after_effect,
            } => store.arm(after, fault, after_effect),
        }
        // Operations whose answer the model does not check are held to the
        // same bound.
        let _ = checked(&store);
        store.slow.store(false, Ordering::SeqCst);
        if let Err(error) = fs.check_invariants() {
            panic!("engine invariants: {error}");
        }
    }
    starved.store(orphan_open(&model), Ordering::SeqCst);
    for (handle, _, _) in std::mem::take(&mut model.handles) {
        let _ = timed(&store, fs.flush(handle)).await;
        let _ = timed(&store, fs.release(handle)).await;
    }
    let _ = timed(&store, fs.shutdown()).await;
    if let Err(error) = fs.check_invariants() {
        panic!("engine invariants after shutdown: {error}");
    }
    if !checked(&store) {
        return;
    }
    // Failures armed for calls that never came would hit the new cache.
    store.disarm();
    // What was said to be written is there for a new mount.
    let fresh = match BlobFs::new(store.clone(), options(block_size, buffers)) {
        Ok(fs) => fs,
        Err(error) => panic!("second cache: {error}"),
    };
    for (name, file) in &model.names {
        let expected = content(file);
        let reopened = timed(
            &store,
            fresh.open(
                name,
                OpenOptions {
                    read: true,
                    ..OpenOptions::default()
                },
            ),
        )
        .await;
        let handle = match reopened {
            Ok(handle) => handle,
            Err(error) => panic!("reopen {name}: {error}"),
        };
        let got = timed(&store, fresh.read(handle, 0, expected.len() as u32 + 1)).await;
        assert!(
            got.as_ref() == Ok(&expected),
            "{name} after remount: {got:?}, expected {expected:?}"
        );
        let _ = timed(&store, fresh.release(handle)).await;
    }
}

pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(crate::bounded(data));
    let (Ok(block_size), Ok(buffers)) = (u8::arbitrary(&mut u), u8::arbitrary(&mut u)) else {
        return;
    };
    let block_size = u64::from(block_size % 16) + 1;
    let buffers = u64::from(buffers % 4) + 1;
    let mut ops = vec![];
    while ops.len() < MAX_OPS && !u.is_empty() {
        match Op::arbitrary(&mut u) {
            Ok(op) => ops.push(op),
            Err(_) => break,
        }
    }
    let store = Arc::new(FaultyStore {
        inner: MemoryStore::new(),
        faults: Mutex::new((0, BTreeMap::new())),
        injected: AtomicBool::new(false),
        slow: AtomicBool::new(false),
    });
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => panic!("tokio runtime: {error}"),
    };
    runtime.block_on(run_ops(store, block_size, buffers, ops));
}
