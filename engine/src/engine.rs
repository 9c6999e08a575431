//! The block cache state machine: open files and handles, blocks and the
//! buffer pool, waiting requests, commits and the I/O queue.
//!
//! Everything happens inside calls to [`Engine::handle`],
//! [`Engine::complete`] and [`Engine::tick`]; each ends with [`Engine::pump`],
//! which retries every waiting request until none can make progress, so a
//! request never waits for an event that has already happened. The effects
//! of a call are drained with [`Engine::poll_effect`].

use crate::bytes::{add, copy_into, div, mul, slice, sub, to_u64, to_usize, zero};
use crate::types::*;
use crate::EngineError;
use std::collections::{BTreeMap, VecDeque};

/// Where the content of a cached block is.
#[derive(Debug)]
enum BlockState {
    /// Being read from storage into a buffer lent to the fetch.
    Loading(IoId),
    /// In memory: `buffer[..block length]` is the block's content.
    Ready(Vec<u8>),
    /// Its buffer is lent to an upload of its content.
    Uploading(IoId),
    /// Not in memory; its content is the staged block `Block::staged`.
    Staged,
}

#[derive(Debug)]
struct Block {
    state: BlockState,
    /// The content differs from every copy in storage.
    dirty: bool,
    /// An uncommitted block in storage holding this block's current content.
    staged: Option<BlockId>,
    /// Requests waiting on this block.
    pins: u32,
    last_use: u64,
    /// Loaded ahead of a reader and not read yet.
    prefetched: bool,
    /// Only this range of the block (block-relative, `[start, end)`) is in
    /// the buffer, stored from the buffer's first byte: a random reader's
    /// miss fetches what it needs, not the whole block. `None`: all of it.
    partial: Option<(usize, usize)>,
}

/// The committed block list of the version the cache is valid for.
#[derive(Debug, Clone)]
enum Layout {
    /// Not loaded.
    Unknown,
    /// Not reusable block by block (put in one piece, or not uniform).
    Opaque,
    /// One id per block, every block but the last exactly the block size.
    Uniform(Vec<BlockId>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum CommitPhase {
    Idle,
    /// Staging the blocks that have no id yet.
    Staging,
    Committing(IoId),
}

#[derive(Debug)]
struct File {
    /// `None` once unlinked (or replaced by a rename onto its name).
    path: Option<String>,
    handles: u32,
    size: u64,
    mtime_ns: u64,
    /// ETag of the committed version the cache is valid for; `None` for a
    /// file not yet in storage.
    etag: Option<String>,
    /// Leading bytes of the file whose content comes from the committed
    /// version; everything after reads as zeros unless written.
    remote_len: u64,
    /// Size of the committed version.
    committed_size: u64,
    layout: Layout,
    blocks: BTreeMap<u64, Block>,
    /// Something was written, truncated or created since the last commit.
    changed: bool,
    commit: CommitPhase,
    commits_started: u64,
    commits_finished: u64,
    error: Option<EngineError>,
    /// A load of the properties in flight.
    loading: Option<IoId>,
    validated_at: Option<Millis>,
    /// In-flight or queued stages started ahead of a commit.
    background_stages: u32,
    /// Storage no longer has the version the cache is valid for, and the
    /// file has no changes of its own: load the current version before reading.
    reload: bool,
    /// The blob was deleted by someone else while open.
    gone: bool,
    /// Counts adoptions of a new version, so that a read never mixes two.
    generation: u64,
}

#[derive(Debug)]
struct Handle {
    file: FileId,
    writable: bool,
    /// End of the previous read, for sequential detection.
    last_read_end: Option<u64>,
    /// Length of the previous read.
    last_read_len: u64,
    /// Blocks to read ahead; grows while reads stay sequential.
    window: u32,
    /// Reads in a row that continued the previous one.
    streak: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Priority {
    Demand = 0,
    WriteBack = 1,
    Prefetch = 2,
}

#[derive(Debug)]
enum IoPurpose {
    Load,
    Fetch {
        block: u64,
        len: usize,
        partial: Option<(usize, usize)>,
    },
    Stage {
        block: u64,
        id: BlockId,
    },
    Commit {
        block_ids: Vec<BlockId>,
        size: u64,
    },
}

#[derive(Debug)]
struct IoTask {
    file: FileId,
    purpose: IoPurpose,
    /// Where it stands in the queue; raised when a request comes to wait on it.
    priority: Priority,
    issued: bool,
    /// The buffer it carries no longer belongs to any block.
    detached: bool,
}

#[derive(Debug)]
enum OpKind {
    Open {
        path: String,
        mode: OpenMode,
        mtime_ns: u64,
    },
    Read {
        handle: HandleId,
        offset: u64,
        end: u64,
        out: Vec<u8>,
        /// The file's generation when the bytes in `out` were read.
        generation: Option<u64>,
    },
    Write {
        handle: HandleId,
        offset: u64,
        data: Vec<u8>,
        done: usize,
        mtime_ns: u64,
    },
    Flush {
        handle: HandleId,
        wait_for: Option<u64>,
    },
    Truncate {
        handle: HandleId,
        size: u64,
        mtime_ns: u64,
    },
    Shutdown,
}

#[derive(Debug)]
struct Op {
    request: RequestId,
    /// Arrival order.
    seq: u64,
    kind: OpKind,
    /// The block this request waits on and holds a pin of.
    pinned: Option<(FileId, u64)>,
    /// When a request waiting for a buffer gives up.
    deadline: Option<Millis>,
}

enum Step {
    Done(Result<Reply, EngineError>),
    /// Waiting for an I/O completion that has been asked for.
    WaitIo,
    /// Waiting for a buffer to become free.
    WaitBuffer,
    /// Waiting for an earlier change of the same file to finish. That one
    /// is bounded (by I/O or by its own buffer deadline), and a deadline
    /// here could run out in the very pass in which it finishes.
    WaitTurn,
}

/// Counters for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    pub prefetches: u64,
    pub bytes_fetched: u64,
    pub bytes_staged: u64,
    pub commits: u64,
    pub buffer_timeouts: u64,
}

/// A snapshot of resource use, for tests and leak checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Occupancy {
    pub buffers_allocated: usize,
    pub buffers_free: usize,
    pub pins: u64,
    pub io_pending: usize,
    pub io_in_flight: usize,
    pub waiting_requests: usize,
    pub open_handles: usize,
    pub files: usize,
}

/// One mount's block cache. See the crate documentation for the protocol.
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    now: Millis,
    files: BTreeMap<FileId, File>,
    paths: BTreeMap<String, FileId>,
    handles: BTreeMap<HandleId, Handle>,
    free_buffers: Vec<Vec<u8>>,
    buffers_allocated: usize,
    ios: BTreeMap<IoId, IoTask>,
    queued: BTreeMap<(Priority, IoId), IoCommand>,
    in_flight: usize,
    ops: VecDeque<Op>,
    effects: VecDeque<Effect>,
    next_file: u64,
    next_handle: u64,
    next_io: u64,
    next_block_id: u64,
    use_clock: u64,
    shutting_down: bool,
    stats: EngineStats,
    next_op: u64,
    /// Per file, the arrival number of the oldest waiting change (write,
    /// truncate, truncating open), as of the start of the current pass of
    /// `pump`: changes of one file go one at a time, in arrival order, so
    /// that a change waiting part-way never has another land inside it.
    first_change: BTreeMap<FileId, u64>,
}

fn internal(what: impl Into<String>) -> EngineError {
    EngineError::Internal(what.into())
}

/// Adjacent reads in a row after which a reader counts as sequential.
const SEQUENTIAL_STREAK: u32 = 2;

/// How far behind the end of the previous read a read may start and still
/// continue it, at the least: the kernel sends the pieces of its read-ahead
/// on several threads, so a sequential reader's reads arrive a little out of
/// order.
const REORDER_SLACK_MIN: u64 = 256 * 1024;

/// The same slack in previous read lengths, for readers of large pieces.
const REORDER_SLACK_READS: u64 = 4;

/// Alignment of the range a random reader's miss fetches.
const PARTIAL_FETCH_ALIGN: usize = 4096;

/// Most in-flight write-back stages of one file before a writer must wait.
fn max_background_stages(config: &EngineConfig) -> u32 {
    let half = config.parallelism.checked_div(2).unwrap_or(1).max(1);
    u32::try_from(half).unwrap_or(u32::MAX)
}

impl Engine {
    pub fn new(config: EngineConfig) -> Result<Engine, EngineError> {
        if config.block_size == 0 || config.block_size > MAX_BLOCK_SIZE {
            return Err(EngineError::InvalidConfig(format!(
                "block size {} must be between 1 byte and {MAX_BLOCK_SIZE} bytes",
                config.block_size
            )));
        }
        to_usize(config.block_size)?;
        if config.pool_buffers < 1 {
            return Err(EngineError::InvalidConfig(
                "the buffer pool needs at least one buffer".into(),
            ));
        }
        if config.parallelism < 1 {
            return Err(EngineError::InvalidConfig("parallelism must be at least 1".into()));
        }
        if config.max_waiting_requests < 1 {
            return Err(EngineError::InvalidConfig(
                "max waiting requests must be at least 1".into(),
            ));
        }
        Ok(Engine {
            config,
            now: Millis(0),
            files: BTreeMap::new(),
            paths: BTreeMap::new(),
            handles: BTreeMap::new(),
            free_buffers: Vec::new(),
            buffers_allocated: 0,
            ios: BTreeMap::new(),
            queued: BTreeMap::new(),
            in_flight: 0,
            ops: VecDeque::new(),
            effects: VecDeque::new(),
            next_file: 1,
            next_handle: 1,
            next_io: 1,
            next_block_id: 0,
            use_clock: 0,
            shutting_down: false,
            stats: EngineStats::default(),
            next_op: 0,
            first_change: BTreeMap::new(),
        })
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn stats(&self) -> EngineStats {
        self.stats
    }

    /// Largest size a file can have: the block limit of a blob.
    pub fn max_file_size(&self) -> u64 {
        self.config.block_size.saturating_mul(MAX_BLOCKS_PER_BLOB)
    }

    // ----- inputs -----

    /// Takes a filesystem request. Its reply comes out as an effect, now or later.
    pub fn handle(&mut self, now: Millis, request: RequestId, req: Request) {
        self.advance_clock(now);
        let kind = match req {
            Request::Open { path, mode, mtime_ns } => OpKind::Open { path, mode, mtime_ns },
            Request::Read { handle, offset, len } => {
                let end = offset.saturating_add(u64::from(len));
                OpKind::Read {
                    handle,
                    offset,
                    end,
                    out: Vec::new(),
                    generation: None,
                }
            }
            Request::Write {
                handle,
                offset,
                data,
                mtime_ns,
            } => OpKind::Write {
                handle,
                offset,
                data,
                done: 0,
                mtime_ns,
            },
            Request::Flush { handle } => OpKind::Flush { handle, wait_for: None },
            Request::Truncate { handle, size, mtime_ns } => OpKind::Truncate { handle, size, mtime_ns },
            Request::Release { handle } => {
                // Never refused as busy: a release does not wait, and the
                // kernel does not retry one, so a refused release would
                // leave its handle open for good.
                let result = self.release(handle);
                self.reply(request, result.map(|()| Reply::Done));
                self.pump();
                return;
            }
            Request::Shutdown => OpKind::Shutdown,
        };
        if self.ops.len() >= self.config.max_waiting_requests {
            self.reply(request, Err(EngineError::Busy(self.ops.len())));
            return;
        }
        if matches!(kind, OpKind::Shutdown) {
            self.begin_shutdown();
        }
        if self.shutting_down && !matches!(kind, OpKind::Shutdown | OpKind::Flush { .. } | OpKind::Read { .. }) {
            self.reply(request, Err(EngineError::ShuttingDown));
            return;
        }
        let seq = self.next_op;
        self.next_op = self.next_op.saturating_add(1);
        self.ops.push_back(Op {
            request,
            seq,
            kind,
            pinned: None,
            deadline: None,
        });
        self.pump();
    }

    /// Takes the completion of an I/O command.
    pub fn complete(&mut self, now: Millis, completion: IoCompletion) {
        self.advance_clock(now);
        if let Err(error) = self.apply_completion(completion) {
            self.fail_everything(&error);
        }
        self.pump();
    }

    /// Lets time pass: requests whose deadline has come fail.
    pub fn tick(&mut self, now: Millis) {
        self.advance_clock(now);
        self.pump();
    }

    /// The next effect to carry out.
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// When [`Engine::tick`] should be called next, if anything waits on time.
    pub fn next_deadline(&self) -> Option<Millis> {
        self.ops.iter().filter_map(|op| op.deadline).min()
    }

    /// Attributes of a file that is open or has unsaved changes: the engine
    /// knows them better than storage does.
    pub fn attr(&self, path: &str) -> Option<FileAttr> {
        let file = self.paths.get(path).and_then(|id| self.files.get(id))?;
        if file.handles == 0 && !file.changed && file.commit == CommitPhase::Idle {
            return None;
        }
        Some(FileAttr {
            size: file.size,
            mtime_ns: file.mtime_ns,
        })
    }

    /// Paths and attributes of every file that is open or has unsaved
    /// changes (including new files not yet in storage).
    pub fn live_files(&self) -> Vec<(String, FileAttr)> {
        self.paths
            .keys()
            .filter_map(|path| self.attr(path).map(|attr| (path.clone(), attr)))
            .collect()
    }

    /// Whether a file is open through any handle.
    pub fn is_open(&self, path: &str) -> bool {
        self.paths
            .get(path)
            .and_then(|id| self.files.get(id))
            .is_some_and(|f| f.handles > 0)
    }

    /// The blob is being deleted: the name no longer reaches the cached
    /// file. Handles still open keep working on the detached file, and
    /// nothing is ever committed under the deleted name again. A commit
    /// already sent to storage cannot be taken back: the caller deletes the
    /// blob after it ends (see [`Engine::commit_in_flight`]), or the commit
    /// would bring the blob back behind the delete.
    pub fn unlink(&mut self, path: &str) {
        if let Some(id) = self.paths.remove(path) {
            let mut unsent = None;
            if let Some(file) = self.files.get_mut(&id) {
                file.path = None;
                if let CommitPhase::Committing(io) = file.commit {
                    if self.ios.get(&io).is_some_and(|task| !task.issued) {
                        file.commit = CommitPhase::Idle;
                        file.commits_finished = file.commits_started;
                        unsent = Some(io);
                    }
                }
            }
            if let Some(io) = unsent {
                self.cancel_io(io);
            }
            self.discard_if_unused(id);
        }
        self.pump();
    }

    /// The file cached under `path`, if any.
    pub fn file_at(&self, path: &str) -> Option<FileId> {
        self.paths.get(path).copied()
    }

    /// Whether a commit of the file has been sent to storage and not answered.
    pub fn commit_in_flight(&self, file_id: FileId) -> bool {
        self.files.get(&file_id).is_some_and(|file| match file.commit {
            CommitPhase::Committing(io) => self.ios.get(&io).is_some_and(|task| task.issued),
            _ => false,
        })
    }

    /// The blob `from` was renamed to `to` in storage; `version` is the
    /// version now under `to`, if it was in storage. Open handles follow the file.
    pub fn renamed(&mut self, from: &str, to: &str, version: Option<RemoteVersion>) {
        self.unlink(to);
        if let Some(id) = self.paths.remove(from) {
            self.paths.insert(to.to_string(), id);
            let block_size = self.config.block_size;
            if let Some(file) = self.files.get_mut(&id) {
                file.path = Some(to.to_string());
                match version {
                    Some(version) if file.etag.is_some() => {
                        file.etag = Some(version.etag);
                        file.layout = layout_of(version.blocks.as_deref(), version.size, block_size);
                    }
                    Some(_) => {}
                    // The version under the new name is not known: what is
                    // cached of a stored file can no longer be trusted.
                    None if file.etag.is_some() => file.validated_at = None,
                    None => {}
                }
            }
            self.discard_if_unused(id);
        }
        self.pump();
    }

    /// Forgets cached data of a closed, unchanged file (another client changed it).
    pub fn invalidate(&mut self, path: &str) {
        if let Some(&id) = self.paths.get(path) {
            if let Some(file) = self.files.get_mut(&id) {
                file.validated_at = None;
            }
            self.discard_if_unused(id);
        }
        self.pump();
    }

    // ----- internals: bookkeeping -----

    fn advance_clock(&mut self, now: Millis) {
        if now > self.now {
            self.now = now;
        }
    }

    fn reply(&mut self, request: RequestId, result: Result<Reply, EngineError>) {
        self.effects.push_back(Effect::Reply { request, result });
    }

    fn touch(&mut self) -> u64 {
        self.use_clock = self.use_clock.saturating_add(1);
        self.use_clock
    }

    fn new_io_id(&mut self) -> IoId {
        let id = IoId(self.next_io);
        self.next_io = self.next_io.saturating_add(1);
        id
    }

    fn new_block_id(&mut self) -> BlockId {
        let mut raw = Vec::with_capacity(BLOCK_ID_LEN);
        raw.extend_from_slice(&self.config.block_id_nonce.to_be_bytes());
        raw.extend_from_slice(&self.next_block_id.to_be_bytes());
        self.next_block_id = self.next_block_id.saturating_add(1);
        BlockId(raw)
    }

    fn block_len(&self, size: u64, index: u64) -> Result<u64, EngineError> {
        let start = mul(index, self.config.block_size)?;
        if start >= size {
            return Ok(0);
        }
        Ok(sub(size, start)?.min(self.config.block_size))
    }

    fn block_count(&self, size: u64) -> u64 {
        size.div_ceil(self.config.block_size)
    }

    fn queue_io(&mut self, file: FileId, path: String, kind: IoKind, purpose: IoPurpose, priority: Priority) -> IoId {
        let id = self.new_io_id();
        self.enqueue(file, purpose, priority, IoCommand { id, path, kind });
        id
    }

    fn enqueue(&mut self, file: FileId, purpose: IoPurpose, priority: Priority, command: IoCommand) {
        let id = command.id;
        self.ios.insert(
            id,
            IoTask {
                file,
                purpose,
                priority,
                issued: false,
                detached: false,
            },
        );
        self.queued.insert(self.queue_key(priority, id), command);
    }

    /// The queue is ordered by priority, then by age.
    fn queue_key(&self, priority: Priority, id: IoId) -> (Priority, IoId) {
        #[cfg(madsim)]
        if self.config.faults.fifo_io_order {
            return (Priority::Demand, id);
        }
        (priority, id)
    }

    /// A request now waits on a queued read-ahead or write-back: it moves up
    /// with the demand work, or the request would wait behind every
    /// background command queued before it.
    fn promote(&mut self, id: IoId) {
        let Some(task) = self.ios.get(&id) else {
            return;
        };
        if task.issued || task.priority == Priority::Demand {
            return;
        }
        let old = self.queue_key(task.priority, id);
        let Some(command) = self.queued.remove(&old) else {
            return;
        };
        self.queued.insert(self.queue_key(Priority::Demand, id), command);
        if let Some(task) = self.ios.get_mut(&id) {
            task.priority = Priority::Demand;
        }
    }

    /// Issues queued commands, most urgent first, up to the parallelism.
    fn issue_io(&mut self) {
        while self.in_flight < self.config.parallelism {
            let Some((_, command)) = self.queued.pop_first() else {
                break;
            };
            if let Some(task) = self.ios.get_mut(&command.id) {
                task.issued = true;
            }
            self.in_flight = self.in_flight.saturating_add(1);
            self.effects.push_back(Effect::Io(command));
        }
    }

    /// Takes back a command: a queued one is dropped (its buffer freed), an
    /// issued one is asked to stop and completes later.
    fn cancel_io(&mut self, id: IoId) {
        let queued_key = self
            .ios
            .get(&id)
            .filter(|task| !task.issued)
            .map(|task| self.queue_key(task.priority, id));
        if let Some(key) = queued_key {
            if let Some(command) = self.queued.remove(&key) {
                self.ios.remove(&id);
                match command.kind {
                    IoKind::Fetch { buffer, .. } | IoKind::Stage { buffer, .. } => self.free_buffers.push(buffer),
                    IoKind::Load { .. } | IoKind::Commit { .. } => {}
                }
            }
        } else if let Some(task) = self.ios.get_mut(&id) {
            task.detached = true;
            self.effects.push_back(Effect::Cancel(id));
        }
    }

    /// A buffer from the free list, a new one within the budget, or one
    /// taken from the least recently used clean block nobody waits on.
    fn take_buffer(&mut self, for_prefetch: bool) -> Option<Vec<u8>> {
        if let Some(buffer) = self.free_buffers.pop() {
            return Some(buffer);
        }
        if self.buffers_allocated < self.config.pool_buffers {
            let len = to_usize(self.config.block_size).ok()?;
            self.buffers_allocated = self.buffers_allocated.saturating_add(1);
            return Some(vec![0; len]);
        }
        // Bounded search: one pass over the cached blocks.
        let mut victim: Option<(bool, u64, FileId, u64)> = None;
        for (&file_id, file) in &self.files {
            for (&index, block) in &file.blocks {
                // Dirty data of a file with a sticky error can never be
                // saved; it must not hold buffers others need.
                let discardable = !block.dirty || file.error.is_some();
                let evictable = matches!(block.state, BlockState::Ready(_)) && discardable && block.pins == 0;
                if !evictable || (for_prefetch && block.prefetched) {
                    continue;
                }
                let key = (block.prefetched, block.last_use, file_id, index);
                if victim.as_ref().is_none_or(|v| key < *v) {
                    victim = Some(key);
                }
            }
        }
        let (_, _, file_id, index) = victim?;
        let file = self.files.get_mut(&file_id)?;
        let block = file.blocks.remove(&index)?;
        self.stats.evictions = self.stats.evictions.saturating_add(1);
        let buffer = match block.state {
            BlockState::Ready(buffer) => buffer,
            other => {
                file.blocks.insert(index, Block { state: other, ..block });
                return None;
            }
        };
        if let Some(id) = block.staged {
            file.blocks.insert(
                index,
                Block {
                    state: BlockState::Staged,
                    dirty: false,
                    staged: Some(id),
                    pins: 0,
                    last_use: block.last_use,
                    prefetched: false,
                    partial: None,
                },
            );
        }
        self.discard_if_unused(file_id);
        Some(buffer)
    }

    /// Starts writing back the least recently used dirty block nobody waits
    /// on, so that its buffer becomes reclaimable.
    fn start_write_back(&mut self) -> Result<(), EngineError> {
        let mut victim: Option<(u64, FileId, u64)> = None;
        for (&file_id, file) in &self.files {
            if file.commit != CommitPhase::Idle || file.error.is_some() || file.path.is_none() {
                continue;
            }
            for (&index, block) in &file.blocks {
                if matches!(block.state, BlockState::Ready(_)) && block.dirty && block.pins == 0 {
                    let key = (block.last_use, file_id, index);
                    if victim.as_ref().is_none_or(|v| key < *v) {
                        victim = Some(key);
                    }
                }
            }
        }
        if let Some((_, file_id, index)) = victim {
            self.stage_block(file_id, index, Priority::WriteBack)?;
        }
        Ok(())
    }

    /// Lends a Ready block's buffer to an upload of its content.
    fn stage_block(&mut self, file_id: FileId, index: u64, priority: Priority) -> Result<(), EngineError> {
        let file = self
            .files
            .get(&file_id)
            .ok_or_else(|| internal("stage of an unknown file"))?;
        let path = file.path.clone().ok_or_else(|| internal("stage of an unlinked file"))?;
        let len = to_usize(self.block_len(file.size, index)?)?;
        let block_id = self.new_block_id();
        let io = self.new_io_id();
        let file = self
            .files
            .get_mut(&file_id)
            .ok_or_else(|| internal("stage of an unknown file"))?;
        let block = file
            .blocks
            .get_mut(&index)
            .ok_or_else(|| internal("stage of a missing block"))?;
        let buffer = match std::mem::replace(&mut block.state, BlockState::Uploading(io)) {
            BlockState::Ready(buffer) => buffer,
            other => {
                block.state = other;
                return Err(internal("stage of a block that is not in memory"));
            }
        };
        if priority == Priority::WriteBack {
            file.background_stages = file.background_stages.saturating_add(1);
        }
        self.stats.bytes_staged = self.stats.bytes_staged.saturating_add(to_u64(len)?);
        let purpose = IoPurpose::Stage {
            block: index,
            id: block_id.clone(),
        };
        let command = IoCommand {
            id: io,
            path,
            kind: IoKind::Stage { block_id, len, buffer },
        };
        self.enqueue(file_id, purpose, priority, command);
        Ok(())
    }

    /// Whether a commit of the file is in flight: its version is about to
    /// change, so a fetch now could name the version being replaced.
    fn committing(&self, file_id: FileId) -> bool {
        self.files
            .get(&file_id)
            .is_some_and(|f| matches!(f.commit, CommitPhase::Committing(_)))
    }

    /// Starts loading block `index` into `buffer` from the committed version:
    /// all of it, or only `range` (block-relative) for a random reader.
    fn fetch_block(
        &mut self,
        file_id: FileId,
        index: u64,
        buffer: Vec<u8>,
        range: Option<(usize, usize)>,
        priority: Priority,
    ) -> Result<(), EngineError> {
        // A fetch that cannot be issued gives its buffer back to the pool.
        let (path, etag, start, len) = match self.fetch_range(file_id, index, range) {
            Ok(found) => found,
            Err(error) => {
                self.free_buffers.push(buffer);
                return Err(error);
            }
        };
        let io = self.queue_io(
            file_id,
            path,
            IoKind::Fetch {
                offset: start,
                len,
                etag,
                buffer,
            },
            IoPurpose::Fetch {
                block: index,
                len,
                partial: range,
            },
            priority,
        );
        let last_use = self.touch();
        let file = self
            .files
            .get_mut(&file_id)
            .ok_or_else(|| internal("fetch for an unknown file"))?;
        file.blocks.insert(
            index,
            Block {
                state: BlockState::Loading(io),
                dirty: false,
                staged: None,
                pins: 0,
                last_use,
                prefetched: priority == Priority::Prefetch,
                partial: range,
            },
        );
        if priority == Priority::Prefetch {
            self.stats.prefetches = self.stats.prefetches.saturating_add(1);
        } else {
            self.stats.misses = self.stats.misses.saturating_add(1);
        }
        Ok(())
    }

    /// Path, version, offset and length of the fetch of block `index`, or of
    /// its block-relative `range`.
    fn fetch_range(
        &self,
        file_id: FileId,
        index: u64,
        range: Option<(usize, usize)>,
    ) -> Result<(String, String, u64, usize), EngineError> {
        let file = self
            .files
            .get(&file_id)
            .ok_or_else(|| internal("fetch for an unknown file"))?;
        // Unlinked while open: its blob is gone, like one deleted by
        // someone else.
        let path = file
            .path
            .clone()
            .ok_or_else(|| EngineError::Stale("(deleted while open)".to_string()))?;
        let etag = file
            .etag
            .clone()
            .ok_or_else(|| internal("fetch for a file not in storage"))?;
        let block_start = mul(index, self.config.block_size)?;
        let (from, to) = match range {
            Some((from, to)) => (to_u64(from)?, to_u64(to)?),
            None => (0, self.block_len(file.size, index)?),
        };
        let start = add(block_start, from)?;
        let end = add(block_start, to)?.min(file.remote_len);
        let len = to_usize(end.saturating_sub(start))?;
        Ok((path, etag, start, len))
    }

    /// Starts a commit of the file unless one is running. Returns the
    /// number of the commit that will include every change made so far.
    fn request_commit(&mut self, file_id: FileId) -> Result<u64, EngineError> {
        let file = self
            .files
            .get_mut(&file_id)
            .ok_or_else(|| internal("commit of an unknown file"))?;
        if let Some(error) = &file.error {
            // A file with a sticky error is never committed again.
            return Err(error.clone());
        }
        if file.path.is_none() {
            // Nothing can be committed under a deleted name, so blocks that
            // exist only as staged blocks cannot be read back.
            return Err(EngineError::Stale("(deleted while open)".to_string()));
        }
        if file.commit == CommitPhase::Idle {
            file.commit = CommitPhase::Staging;
            file.commits_started = file.commits_started.saturating_add(1);
        }
        Ok(file.commits_started)
    }

    /// Drives a file's commit: stages what has no id yet, then commits the list.
    fn advance_commit(&mut self, file_id: FileId) -> Result<(), EngineError> {
        let Some(file) = self.files.get(&file_id) else {
            return Ok(());
        };
        if file.commit != CommitPhase::Staging {
            return Ok(());
        }
        if file.path.is_none() || file.error.is_some() {
            // Nothing is committed under a deleted name or after a failure.
            let file = self
                .files
                .get_mut(&file_id)
                .ok_or_else(|| internal("commit of an unknown file"))?;
            file.commit = CommitPhase::Idle;
            file.commits_finished = file.commits_started;
            // A closed file lets go of what the commit had started, the
            // fetches of blocks it was to stage among them.
            self.discard_if_unused(file_id);
            return Ok(());
        }
        let count = self.block_count(file.size);
        let mut ids = Vec::new();
        let mut to_stage = Vec::new();
        let mut to_fetch = Vec::new();
        let mut to_refetch = Vec::new();
        let mut complete = true;
        for index in 0..count {
            let len = self.block_len(file.size, index)?;
            match file.blocks.get(&index) {
                Some(block) => match &block.state {
                    BlockState::Loading(_) | BlockState::Uploading(_) => complete = false,
                    BlockState::Staged => match &block.staged {
                        Some(id) => ids.push(id.clone()),
                        None => return Err(internal("staged block without an id")),
                    },
                    BlockState::Ready(_) => {
                        if let (false, Some(id)) = (block.dirty, &block.staged) {
                            ids.push(id.clone());
                        } else if let (false, Some(id)) = (block.dirty, self.committed_id(file, index, len)?) {
                            ids.push(id);
                        } else if block.partial.is_some() {
                            // Staging needs the whole block.
                            complete = false;
                            to_refetch.push(index);
                        } else {
                            // Staged even when pinned: a request waiting on
                            // it then waits for the upload, never the reverse.
                            complete = false;
                            to_stage.push(index);
                        }
                    }
                },
                None => match self.committed_id(file, index, len)? {
                    Some(id) => ids.push(id),
                    None => {
                        complete = false;
                        to_fetch.push(index);
                    }
                },
            }
        }
        if complete && !self.write_part_way(file_id) {
            let path = file
                .path
                .clone()
                .ok_or_else(|| internal("commit of an unlinked file"))?;
            let condition = match &file.etag {
                Some(etag) => CommitCondition::IfMatch(etag.clone()),
                None => CommitCondition::IfNotExists,
            };
            let size = file.size;
            let io = self.queue_io(
                file_id,
                path,
                IoKind::Commit {
                    block_ids: ids.clone(),
                    condition,
                },
                IoPurpose::Commit { block_ids: ids, size },
                Priority::Demand,
            );
            let file = self
                .files
                .get_mut(&file_id)
                .ok_or_else(|| internal("commit of an unknown file"))?;
            file.commit = CommitPhase::Committing(io);
            return Ok(());
        }
        for index in to_stage {
            self.stage_block(file_id, index, Priority::Demand)?;
        }
        for index in to_refetch {
            self.refetch(file_id, index, None)?;
        }
        for index in to_fetch {
            let Some(mut buffer) = self.take_buffer(false) else {
                self.start_write_back()?;
                break;
            };
            let file = self
                .files
                .get(&file_id)
                .ok_or_else(|| internal("commit of an unknown file"))?;
            let start = mul(index, self.config.block_size)?;
            if start >= file.remote_len {
                // A hole: its content is zeros, no need to read anything.
                let len = to_usize(self.block_len(file.size, index)?)?;
                zero(&mut buffer, 0, len)?;
                self.insert_dirty_block(file_id, index, buffer)?;
                self.stage_block(file_id, index, Priority::Demand)?;
            } else {
                self.fetch_block(file_id, index, buffer, None, Priority::Demand)?;
            }
        }
        Ok(())
    }

    /// Whether a write to the file has stored part of its bytes and not
    /// yet ended.
    fn write_part_way(&self, file_id: FileId) -> bool {
        self.ops.iter().any(|op| match &op.kind {
            OpKind::Write { handle, done, .. } => {
                *done > 0 && self.handles.get(handle).is_some_and(|h| h.file == file_id)
            }
            _ => false,
        })
    }

    /// The committed id holding exactly block `index` of length `len`, if
    /// the committed version's layout lets it be reused.
    fn committed_id(&self, file: &File, index: u64, len: u64) -> Result<Option<BlockId>, EngineError> {
        let Layout::Uniform(ids) = &file.layout else {
            return Ok(None);
        };
        let start = mul(index, self.config.block_size)?;
        let end = add(start, len)?;
        let committed_len = self.block_len(file.committed_size, index)?;
        if committed_len != len || end > file.remote_len {
            return Ok(None);
        }
        Ok(ids.get(to_usize(index)?).cloned())
    }

    fn begin_shutdown(&mut self) {
        self.shutting_down = true;
        let prefetching: Vec<IoId> = self
            .ios
            .iter()
            .filter(|(_, task)| matches!(task.purpose, IoPurpose::Fetch { .. }))
            .filter(|(_, task)| {
                self.files.get(&task.file).is_some_and(|f| {
                    f.blocks
                        .values()
                        .any(|b| b.prefetched && b.pins == 0 && matches!(b.state, BlockState::Loading(_)))
                })
            })
            .map(|(id, _)| *id)
            .collect();
        for io in prefetching {
            self.cancel_prefetch_io(io);
        }
        let dirty: Vec<FileId> = self
            .files
            .iter()
            .filter(|(_, f)| f.changed && f.error.is_none() && f.path.is_some())
            .map(|(id, _)| *id)
            .collect();
        for id in dirty {
            let _ = self.request_commit(id);
        }
    }

    fn cancel_prefetch_io(&mut self, io: IoId) {
        let Some(task) = self.ios.get(&io) else {
            return;
        };
        let (file_id, index) = match task.purpose {
            IoPurpose::Fetch { block, .. } => (task.file, block),
            _ => return,
        };
        let is_unpinned_prefetch = self
            .files
            .get(&file_id)
            .and_then(|f| f.blocks.get(&index))
            .is_some_and(|b| b.prefetched && b.pins == 0 && matches!(b.state, BlockState::Loading(id) if id == io));
        if !is_unpinned_prefetch {
            return;
        }
        if let Some(file) = self.files.get_mut(&file_id) {
            file.blocks.remove(&index);
        }
        self.cancel_io(io);
    }

    fn release(&mut self, handle: HandleId) -> Result<(), EngineError> {
        let state = self.handles.remove(&handle).ok_or(EngineError::BadHandle(handle.0))?;
        let file_id = state.file;
        let file = self
            .files
            .get_mut(&file_id)
            .ok_or_else(|| internal("handle of an unknown file"))?;
        file.handles = file.handles.saturating_sub(1);
        if file.handles > 0 {
            return Ok(());
        }
        let prefetching: Vec<IoId> = file
            .blocks
            .values()
            .filter_map(|b| match b.state {
                BlockState::Loading(io) if b.prefetched && b.pins == 0 => Some(io),
                _ => None,
            })
            .collect();
        #[cfg(madsim)]
        let prefetching = if self.config.faults.keep_prefetch_on_release {
            Vec::new()
        } else {
            prefetching
        };
        for io in prefetching {
            self.cancel_prefetch_io(io);
        }
        let file = self
            .files
            .get_mut(&file_id)
            .ok_or_else(|| internal("handle of an unknown file"))?;
        if file.error.is_some() || file.path.is_none() {
            // Its changes can no longer be committed; the error was reported.
            self.drop_changes(file_id);
        } else if file.changed {
            // Closed without a successful flush: commit in the background
            // rather than lose what was written.
            self.request_commit(file_id)?;
        }
        self.let_go_if_closed(file_id);
        Ok(())
    }

    /// Throws away the uncommitted changes of a file nobody can save any more.
    fn drop_changes(&mut self, file_id: FileId) {
        let Some(file) = self.files.get_mut(&file_id) else {
            return;
        };
        let mut freed = Vec::new();
        let indices: Vec<u64> = file.blocks.keys().copied().collect();
        for index in indices {
            let Some(block) = file.blocks.get(&index) else {
                continue;
            };
            let discard = block.dirty || block.staged.is_some() || matches!(block.state, BlockState::Staged);
            if discard && block.pins == 0 {
                if let Some(block) = file.blocks.remove(&index) {
                    if let BlockState::Ready(buffer) = block.state {
                        freed.push(buffer);
                    }
                }
            }
        }
        file.changed = false;
        // The cached content no longer matches any version in storage.
        file.validated_at = None;
        file.etag = None;
        self.free_buffers.extend(freed);
    }

    /// Forgets a file that has no handles, no changes, no I/O and, when its
    /// name is gone or its data is stale, no cached blocks either.
    fn discard_if_unused(&mut self, file_id: FileId) {
        let Some(file) = self.files.get(&file_id) else {
            return;
        };
        if file.handles > 0 || file.commit != CommitPhase::Idle || file.loading.is_some() {
            return;
        }
        if file.path.is_some() && file.changed && file.error.is_none() {
            return;
        }
        let stale = file.path.is_none() || file.validated_at.is_none() || file.error.is_some() || file.changed;
        if !stale && !file.blocks.is_empty() {
            return;
        }
        if self.ops.iter().any(|op| op.pinned.is_some_and(|(f, _)| f == file_id)) {
            return;
        }
        let Some(mut file) = self.files.remove(&file_id) else {
            return;
        };
        for (_, block) in std::mem::take(&mut file.blocks) {
            match block.state {
                BlockState::Ready(buffer) => self.free_buffers.push(buffer),
                BlockState::Loading(io) | BlockState::Uploading(io) => {
                    if let Some(task) = self.ios.get_mut(&io) {
                        task.detached = true;
                    }
                    self.cancel_io(io);
                }
                BlockState::Staged => {}
            }
        }
        if let Some(path) = &file.path {
            if self.paths.get(path) == Some(&file_id) {
                self.paths.remove(path);
            }
        }
    }

    /// Forgets every cached block of a file: buffers go back to the pool,
    /// fetches of the old content stop, uploads carrying its blocks are let
    /// go, and requests pinning them stop.
    fn drop_blocks(&mut self, file_id: FileId) {
        let Some(file) = self.files.get_mut(&file_id) else {
            return;
        };
        let blocks = std::mem::take(&mut file.blocks);
        for (_, block) in blocks {
            match block.state {
                BlockState::Ready(buffer) => self.free_buffers.push(buffer),
                BlockState::Loading(io) => self.cancel_io(io),
                BlockState::Uploading(io) => {
                    if let Some(task) = self.ios.get_mut(&io) {
                        task.detached = true;
                    }
                }
                BlockState::Staged => {}
            }
        }
        for op in self.ops.iter_mut() {
            if op.pinned.is_some_and(|(f, _)| f == file_id) {
                op.pinned = None;
            }
        }
    }

    /// Requests pinning a block that is gone hold no pin any more.
    fn clear_pins(&mut self, file_id: FileId, index: u64) {
        for op in self.ops.iter_mut() {
            if op.pinned == Some((file_id, index)) {
                op.pinned = None;
            }
        }
    }

    fn fail_everything(&mut self, error: &EngineError) {
        let message = format!("the cache met an inconsistency and failed the request: {error}");
        for op in std::mem::take(&mut self.ops) {
            self.unpin(op.pinned);
            self.reply(op.request, Err(EngineError::Internal(message.clone())));
        }
    }

    /// Puts `buffer` in as the dirty, in-memory content of block `index`.
    /// Requests still pinning an entry it replaces (a staged-only block)
    /// keep their pins.
    fn insert_dirty_block(&mut self, file_id: FileId, index: u64, buffer: Vec<u8>) -> Result<(), EngineError> {
        let last_use = self.touch();
        let file = self.files.get_mut(&file_id).ok_or_else(|| internal("unknown file"))?;
        let pins = file.blocks.get(&index).map_or(0, |b| b.pins);
        file.blocks.insert(
            index,
            Block {
                state: BlockState::Ready(buffer),
                dirty: true,
                staged: None,
                pins,
                last_use,
                prefetched: false,
                partial: None,
            },
        );
        Ok(())
    }

    /// Makes a request hold a pin on block `index`, giving back a pin it
    /// may still hold on another block.
    fn pin_block(&mut self, pinned: &mut Option<(FileId, u64)>, file_id: FileId, index: u64) {
        if *pinned == Some((file_id, index)) {
            return;
        }
        self.unpin(pinned.take());
        let mut waits_on = None;
        if let Some(block) = self.files.get_mut(&file_id).and_then(|f| f.blocks.get_mut(&index)) {
            block.pins = block.pins.saturating_add(1);
            *pinned = Some((file_id, index));
            if let BlockState::Loading(io) | BlockState::Uploading(io) = block.state {
                waits_on = Some(io);
            }
        }
        if let Some(io) = waits_on {
            self.promote(io);
        }
    }

    fn unpin(&mut self, pinned: Option<(FileId, u64)>) {
        if let Some((file_id, index)) = pinned {
            if let Some(block) = self.files.get_mut(&file_id).and_then(|f| f.blocks.get_mut(&index)) {
                block.pins = block.pins.saturating_sub(1);
            }
        }
    }

    // ----- completions -----

    fn apply_completion(&mut self, completion: IoCompletion) -> Result<(), EngineError> {
        let IoCompletion { id, buffer, result } = completion;
        let Some(task) = self.ios.remove(&id) else {
            // Unknown id: never issued by this engine, or already completed.
            // Its buffer is not one of ours and is not adopted.
            return Ok(());
        };
        // A buffer that comes back with the wrong size counts as lost.
        let block_size = self.config.block_size;
        let buffer = buffer.filter(|b| to_u64(b.len()).ok() == Some(block_size));
        if task.issued {
            self.in_flight = self.in_flight.saturating_sub(1);
        }
        let file_id = task.file;
        // A completion of the wrong kind, or claiming more bytes than asked
        // for, is a driver bug: it fails like any I/O error would.
        let result = match (&task.purpose, result) {
            (IoPurpose::Load, Ok(done @ IoDone::Loaded(_))) => Ok(done),
            (IoPurpose::Fetch { len, .. }, Ok(IoDone::Fetched { bytes })) if bytes <= *len => {
                Ok(IoDone::Fetched { bytes })
            }
            (IoPurpose::Stage { .. }, Ok(IoDone::Staged)) => Ok(IoDone::Staged),
            (IoPurpose::Commit { .. }, Ok(done @ IoDone::Committed { .. })) => Ok(done),
            (_, Ok(other)) => {
                let message = format!("inconsistent completion of I/O {id}: {other:?}");
                #[cfg(madsim)]
                if self.config.faults.panic_on_internal {
                    std::panic::panic_any(message);
                }
                Err(IoError {
                    kind: IoErrorKind::Failed,
                    message,
                })
            }
            (_, Err(error)) => Err(error),
        };
        match task.purpose {
            IoPurpose::Load => self.on_loaded(file_id, id, result),
            IoPurpose::Fetch { block, partial, .. } => {
                self.on_fetched(file_id, block, partial, id, task.detached, buffer, result)
            }
            IoPurpose::Stage { block, id: block_id } => {
                self.on_staged(file_id, block, id, task.detached, block_id, buffer, result)
            }
            // Commands without a buffer: anything given back is not ours.
            IoPurpose::Commit { block_ids, size } => self.on_committed(file_id, id, block_ids, size, result),
        }
    }

    fn on_loaded(&mut self, file_id: FileId, io: IoId, result: Result<IoDone, IoError>) -> Result<(), EngineError> {
        let now = self.now;
        let block_size = self.config.block_size;
        let Some(file) = self.files.get_mut(&file_id) else {
            return Ok(());
        };
        if file.loading != Some(io) {
            return Ok(());
        }
        file.loading = None;
        match result {
            Ok(IoDone::Loaded(Some(version))) => {
                let same = file.etag.as_deref() == Some(version.etag.as_str());
                file.reload = false;
                let has_changes = file.changed || file.commit != CommitPhase::Idle;
                if has_changes && !same && file.etag.is_some() {
                    // Changes of our own define the content until committed;
                    // their commit is conditional and will fail if it must.
                    file.validated_at = Some(now);
                    return Ok(());
                }
                if !same {
                    file.generation = file.generation.saturating_add(1);
                    self.drop_blocks(file_id);
                }
                let file = self
                    .files
                    .get_mut(&file_id)
                    .ok_or_else(|| internal("load of an unknown file"))?;
                if !same || version.blocks.is_some() {
                    file.layout = match version.blocks.as_deref() {
                        Some(blocks) => layout_of(Some(blocks), version.size, block_size),
                        None if same => file.layout.clone(),
                        None => Layout::Unknown,
                    };
                }
                if !same {
                    file.size = version.size;
                    file.committed_size = version.size;
                    file.remote_len = version.size;
                    file.mtime_ns = version.mtime_ns;
                    file.etag = Some(version.etag);
                }
                file.validated_at = Some(now);
            }
            Ok(IoDone::Loaded(None)) => {
                file.validated_at = Some(now);
                file.reload = false;
                if !file.changed && file.commit == CommitPhase::Idle && file.etag.is_some() {
                    // Deleted by someone else: open handles can no longer read it.
                    file.gone = file.handles > 0;
                    file.etag = None;
                    file.size = 0;
                    file.committed_size = 0;
                    file.remote_len = 0;
                    file.layout = Layout::Unknown;
                    file.generation = file.generation.saturating_add(1);
                    self.drop_blocks(file_id);
                }
            }
            Ok(other) => return Err(internal(format!("load completed with {other:?}"))),
            Err(error) => {
                file.error = Some(EngineError::from_io(file.path.as_deref().unwrap_or("?"), &error));
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn on_fetched(
        &mut self,
        file_id: FileId,
        index: u64,
        partial: Option<(usize, usize)>,
        io: IoId,
        detached: bool,
        buffer: Option<Vec<u8>>,
        result: Result<IoDone, IoError>,
    ) -> Result<(), EngineError> {
        let current = !detached
            && self
                .files
                .get(&file_id)
                .and_then(|f| f.blocks.get(&index))
                .is_some_and(|b| matches!(b.state, BlockState::Loading(id) if id == io));
        let Some(mut buffer) = buffer else {
            // The driver lost the buffer: give its place in the budget back.
            self.buffers_allocated = self.buffers_allocated.saturating_sub(1);
            if current {
                if let Some(file) = self.files.get_mut(&file_id) {
                    file.blocks.remove(&index);
                }
                // The waiting requests find the block gone and fetch it again.
                self.clear_pins(file_id, index);
            }
            return Ok(());
        };
        if !current {
            self.free_buffers.push(buffer);
            return Ok(());
        }
        let file = self
            .files
            .get_mut(&file_id)
            .ok_or_else(|| internal("fetch of an unknown file"))?;
        match result {
            Ok(IoDone::Fetched { bytes }) => {
                // Past what storage returned, the content is zeros.
                let filled = match partial {
                    Some((from, to)) => to.saturating_sub(from),
                    None => to_usize(self.block_len_of(file_id, index)?)?,
                };
                #[cfg(madsim)]
                let bytes = if self.config.faults.skip_fetch_zeroing {
                    filled
                } else {
                    bytes
                };
                zero(&mut buffer, bytes.min(filled), filled)?;
                self.stats.bytes_fetched = self.stats.bytes_fetched.saturating_add(to_u64(bytes)?);
                let file = self
                    .files
                    .get_mut(&file_id)
                    .ok_or_else(|| internal("fetch of an unknown file"))?;
                let block = file
                    .blocks
                    .get_mut(&index)
                    .ok_or_else(|| internal("fetched block vanished"))?;
                block.state = BlockState::Ready(buffer);
            }
            Ok(other) => {
                self.free_buffers.push(buffer);
                return Err(internal(format!("fetch completed with {other:?}")));
            }
            Err(error) => {
                let path = file.path.clone().unwrap_or_default();
                let pinned = file.blocks.remove(&index).is_some_and(|b| b.pins > 0);
                self.free_buffers.push(buffer);
                let file = self
                    .files
                    .get_mut(&file_id)
                    .ok_or_else(|| internal("fetch of an unknown file"))?;
                if matches!(error.kind, IoErrorKind::PreconditionFailed | IoErrorKind::NotFound) {
                    file.validated_at = None;
                    if !file.changed && file.commit == CommitPhase::Idle {
                        // Someone else replaced the blob: load the new version
                        // and let the readers start over with it.
                        file.reload = true;
                        self.clear_pins(file_id, index);
                        return Ok(());
                    }
                }
                if pinned {
                    // Fail exactly the requests that needed this block; the
                    // block can be fetched again later.
                    let failure = EngineError::from_io(&path, &error);
                    let waiting: Vec<usize> = self
                        .ops
                        .iter()
                        .enumerate()
                        .filter(|(_, op)| op.pinned == Some((file_id, index)))
                        .map(|(i, _)| i)
                        .collect();
                    for position in waiting.into_iter().rev() {
                        if let Some(op) = self.ops.remove(position) {
                            // A write that already stored bytes reports them.
                            let result = partial_result(&op, failure.clone());
                            self.reply(op.request, result);
                        }
                    }
                }
                // A commit that needed this block cannot go on.
                if let Some(file) = self.files.get_mut(&file_id) {
                    if file.commit == CommitPhase::Staging {
                        file.error = Some(EngineError::WriteFailed {
                            path,
                            message: error.message,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    fn block_len_of(&self, file_id: FileId, index: u64) -> Result<u64, EngineError> {
        let file = self.files.get(&file_id).ok_or_else(|| internal("unknown file"))?;
        self.block_len(file.size, index)
    }

    #[allow(clippy::too_many_arguments)]
    fn on_staged(
        &mut self,
        file_id: FileId,
        index: u64,
        io: IoId,
        detached: bool,
        block_id: BlockId,
        buffer: Option<Vec<u8>>,
        result: Result<IoDone, IoError>,
    ) -> Result<(), EngineError> {
        let background = self.files.get(&file_id).is_some_and(|f| f.background_stages > 0);
        let current = !detached
            && self
                .files
                .get(&file_id)
                .and_then(|f| f.blocks.get(&index))
                .is_some_and(|b| matches!(b.state, BlockState::Uploading(id) if id == io));
        if let Some(file) = self.files.get_mut(&file_id) {
            if background {
                file.background_stages = file.background_stages.saturating_sub(1);
            }
        }
        if !current {
            match buffer {
                Some(buffer) => self.free_buffers.push(buffer),
                None => self.buffers_allocated = self.buffers_allocated.saturating_sub(1),
            }
            return Ok(());
        }
        let file = self
            .files
            .get_mut(&file_id)
            .ok_or_else(|| internal("stage of an unknown file"))?;
        let path = file.path.clone().unwrap_or_default();
        let block = file
            .blocks
            .get_mut(&index)
            .ok_or_else(|| internal("staged block vanished"))?;
        match (result, buffer) {
            (Ok(IoDone::Staged), Some(buffer)) => {
                block.state = BlockState::Ready(buffer);
                block.dirty = false;
                block.staged = Some(block_id);
            }
            (Ok(IoDone::Staged), None) => {
                block.state = BlockState::Staged;
                block.dirty = false;
                block.staged = Some(block_id);
                self.buffers_allocated = self.buffers_allocated.saturating_sub(1);
            }
            (Ok(other), buffer) => {
                if let Some(buffer) = buffer {
                    block.state = BlockState::Ready(buffer);
                }
                return Err(internal(format!("stage completed with {other:?}")));
            }
            (Err(error), Some(buffer)) => {
                block.state = BlockState::Ready(buffer);
                file.error = Some(EngineError::WriteFailed {
                    path,
                    message: error.message,
                });
            }
            (Err(error), None) => {
                file.blocks.remove(&index);
                for op in self.ops.iter_mut() {
                    if op.pinned == Some((file_id, index)) {
                        op.pinned = None;
                    }
                }
                self.buffers_allocated = self.buffers_allocated.saturating_sub(1);
                file.error = Some(EngineError::WriteFailed {
                    path,
                    message: error.message,
                });
            }
        }
        Ok(())
    }

    fn on_committed(
        &mut self,
        file_id: FileId,
        io: IoId,
        block_ids: Vec<BlockId>,
        size: u64,
        result: Result<IoDone, IoError>,
    ) -> Result<(), EngineError> {
        let now = self.now;
        let Some(file) = self.files.get_mut(&file_id) else {
            return Ok(());
        };
        if file.commit != CommitPhase::Committing(io) {
            return Ok(());
        }
        file.commit = CommitPhase::Idle;
        file.commits_finished = file.commits_started;
        match result {
            Ok(IoDone::Committed { etag }) => {
                self.stats.commits = self.stats.commits.saturating_add(1);
                file.etag = Some(etag);
                file.committed_size = size;
                file.remote_len = size;
                file.layout = Layout::Uniform(block_ids);
                file.changed = false;
                file.validated_at = Some(now);
                let mut committed_away = Vec::new();
                file.blocks.retain(|index, block| {
                    block.staged = None;
                    let keep = !matches!(block.state, BlockState::Staged);
                    if !keep {
                        committed_away.push(*index);
                    }
                    keep
                });
                // Requests still pinning those blocks (say, a writer waiting
                // for the commit) find them gone and read the new version.
                for index in committed_away {
                    self.clear_pins(file_id, index);
                }
            }
            Ok(other) => return Err(internal(format!("commit completed with {other:?}"))),
            // Unlinked or renamed over while the commit ran (a rename onto
            // its name makes the commit fail): nothing was to be saved under
            // that name any more, as for a commit never sent.
            Err(_) if file.path.is_none() => {}
            Err(error) => {
                let path = file.path.clone().unwrap_or_default();
                let message = match error.kind {
                    IoErrorKind::PreconditionFailed => {
                        "the blob was changed or created by someone else meanwhile".to_string()
                    }
                    _ => error.message,
                };
                file.error = Some(EngineError::WriteFailed { path, message });
            }
        }
        self.discard_if_unused(file_id);
        Ok(())
    }

    // ----- the pump -----

    /// Retries waiting requests until none makes progress, drives commits,
    /// and issues I/O.
    pub fn pump(&mut self) {
        loop {
            let mut finished_any = false;
            let mut ended = Vec::new();
            self.first_change = self.waiting_changes();
            let waiting = self.ops.len();
            for _ in 0..waiting {
                let Some(mut op) = self.ops.pop_front() else {
                    break;
                };
                let file = self.op_file(&op);
                match self.step(&mut op) {
                    Ok(Step::Done(result)) => {
                        self.unpin(op.pinned.take());
                        self.reply(op.request, result);
                        ended.extend(file);
                        finished_any = true;
                    }
                    Ok(Step::WaitIo) if !self.ios.is_empty() => {
                        op.deadline = None;
                        self.ops.push_back(op);
                    }
                    Ok(Step::WaitTurn) => {
                        op.deadline = None;
                        self.ops.push_back(op);
                    }
                    // Waiting for I/O when none is pending means waiting for
                    // buffers that a commit or a load needs: bounded in time.
                    Ok(Step::WaitIo) | Ok(Step::WaitBuffer) => {
                        let deadline = *op
                            .deadline
                            .get_or_insert(self.now.saturating_add(self.buffer_wait_ms()));
                        if self.now >= deadline {
                            self.unpin(op.pinned.take());
                            self.stats.buffer_timeouts = self.stats.buffer_timeouts.saturating_add(1);
                            let message = format!(
                                "no cache buffer became free within {} ms (all {} in use)",
                                self.config.buffer_wait_timeout_ms, self.config.pool_buffers
                            );
                            let result = partial_result(&op, EngineError::TimedOut(message));
                            self.reply(op.request, result);
                            ended.extend(file);
                            finished_any = true;
                        } else {
                            self.ops.push_back(op);
                        }
                    }
                    Err(error) => {
                        #[cfg(madsim)]
                        if self.config.faults.panic_on_internal && matches!(error, EngineError::Internal(_)) {
                            std::panic::panic_any(error.to_string());
                        }
                        #[cfg(madsim)]
                        if self.config.faults.keep_pin_on_error {
                            op.pinned = None;
                        }
                        self.unpin(op.pinned.take());
                        let result = partial_result(&op, error);
                        self.reply(op.request, result);
                        ended.extend(file);
                        finished_any = true;
                    }
                }
            }
            for file_id in ended {
                self.let_go_if_closed(file_id);
            }
            let committing: Vec<FileId> = self
                .files
                .iter()
                .filter(|(_, f)| f.commit == CommitPhase::Staging)
                .map(|(id, _)| *id)
                .collect();
            for file_id in committing {
                match self.advance_commit(file_id) {
                    Err(error) => {
                        if let Some(file) = self.files.get_mut(&file_id) {
                            file.error = Some(error);
                        }
                        finished_any = true;
                    }
                    // Given up without I/O (a sticky error, or no name left):
                    // whoever waits for the commit must be looked at again,
                    // as no completion will come to wake them.
                    Ok(()) if self.files.get(&file_id).is_none_or(|f| f.commit == CommitPhase::Idle) => {
                        finished_any = true;
                    }
                    Ok(()) => {}
                }
            }
            self.issue_io();
            if !finished_any {
                break;
            }
        }
    }

    /// The file a waiting request changes, if it is a change.
    fn change_target(&self, kind: &OpKind) -> Option<FileId> {
        match kind {
            OpKind::Write { handle, .. } | OpKind::Truncate { handle, .. } => self.handles.get(handle).map(|h| h.file),
            OpKind::Open { path, mode, .. } if mode.write && mode.truncate => self.paths.get(path).copied(),
            _ => None,
        }
    }

    /// Per file, the arrival number of its oldest waiting change.
    fn waiting_changes(&self) -> BTreeMap<FileId, u64> {
        let mut first = BTreeMap::new();
        for op in &self.ops {
            if let Some(file) = self.change_target(&op.kind) {
                first.entry(file).or_insert(op.seq);
            }
        }
        first
    }

    /// Whether no change of the file that arrived before `seq` still waits.
    fn turn_of(&self, seq: u64, file: FileId) -> bool {
        self.first_change.get(&file).is_none_or(|&first| first >= seq)
    }

    /// The file a request concerns: its handle's, or the one an open finds
    /// under its path.
    fn op_file(&self, op: &Op) -> Option<FileId> {
        let handle = match &op.kind {
            OpKind::Open { path, .. } => return self.paths.get(path).copied(),
            OpKind::Shutdown => return None,
            OpKind::Read { handle, .. }
            | OpKind::Write { handle, .. }
            | OpKind::Flush { handle, .. }
            | OpKind::Truncate { handle, .. } => handle,
        };
        self.handles.get(handle).map(|h| h.file)
    }

    /// A file nobody has open, waits on or commits needs none of its
    /// fetches: a request that ended (failed, or an open refused at
    /// shutdown) can leave a fetch it started with no one to read it.
    fn let_go_if_closed(&mut self, file_id: FileId) {
        let Some(file) = self.files.get(&file_id) else {
            return;
        };
        let closed = file.handles == 0
            && file.commit == CommitPhase::Idle
            && !self.ops.iter().any(|op| self.op_file(op) == Some(file_id));
        if closed {
            let unwanted: Vec<(u64, IoId)> = file
                .blocks
                .iter()
                .filter_map(|(index, block)| match block.state {
                    BlockState::Loading(io) if block.pins == 0 => Some((*index, io)),
                    _ => None,
                })
                .collect();
            for (index, io) in unwanted {
                if let Some(file) = self.files.get_mut(&file_id) {
                    file.blocks.remove(&index);
                }
                self.cancel_io(io);
            }
        }
        self.discard_if_unused(file_id);
    }

    fn step(&mut self, op: &mut Op) -> Result<Step, EngineError> {
        match &mut op.kind {
            OpKind::Open { path, mode, mtime_ns } => {
                let (path, mode, mtime_ns) = (path.clone(), *mode, *mtime_ns);
                self.step_open(op.seq, &path, mode, mtime_ns)
            }
            OpKind::Read { .. } => self.step_read(op),
            OpKind::Write { .. } => self.step_write(op),
            OpKind::Flush { handle, wait_for } => {
                let handle = *handle;
                let file_id = self.handles.get(&handle).ok_or(EngineError::BadHandle(handle.0))?.file;
                let file = self
                    .files
                    .get(&file_id)
                    .ok_or_else(|| internal("handle of an unknown file"))?;
                if let Some(target) = *wait_for {
                    if file.commits_finished < target {
                        return Ok(Step::WaitIo);
                    }
                    #[cfg(madsim)]
                    if self.config.faults.hide_write_errors {
                        return Ok(Step::Done(Ok(Reply::Done)));
                    }
                    return match &file.error {
                        Some(error) => Ok(Step::Done(Err(error.clone()))),
                        None => Ok(Step::Done(Ok(Reply::Done))),
                    };
                }
                if let Some(error) = &file.error {
                    return Ok(Step::Done(Err(error.clone())));
                }
                if file.path.is_none() {
                    // Unlinked: there is nothing to save it to.
                    return Ok(Step::Done(Ok(Reply::Done)));
                }
                if !file.changed && file.commit == CommitPhase::Idle {
                    return Ok(Step::Done(Ok(Reply::Done)));
                }
                let target = self.request_commit(file_id)?;
                if let OpKind::Flush { wait_for, .. } = &mut op.kind {
                    *wait_for = Some(target);
                }
                Ok(Step::WaitIo)
            }
            OpKind::Truncate { .. } => self.step_truncate(op),
            OpKind::Shutdown => {
                let busy = self
                    .files
                    .values()
                    .any(|f| f.commit != CommitPhase::Idle || f.loading.is_some());
                let others_waiting = !self.ops.is_empty();
                if busy || others_waiting || self.in_flight > 0 || !self.queued.is_empty() {
                    #[cfg(madsim)]
                    if self.config.faults.early_shutdown_reply {
                        return Ok(Step::Done(Ok(Reply::Done)));
                    }
                    return Ok(Step::WaitIo);
                }
                let failed: Vec<String> = self
                    .files
                    .values()
                    .filter(|f| f.changed && f.path.is_some())
                    .map(|f| match &f.error {
                        Some(error) => error.to_string(),
                        None => format!("{} was not saved", f.path.as_deref().unwrap_or("?")),
                    })
                    .collect();
                if failed.is_empty() {
                    Ok(Step::Done(Ok(Reply::Done)))
                } else {
                    Ok(Step::Done(Err(EngineError::WriteFailed {
                        path: "(several files)".into(),
                        message: failed.join("; "),
                    })))
                }
            }
        }
    }

    fn step_open(&mut self, seq: u64, path: &str, mode: OpenMode, mtime_ns: u64) -> Result<Step, EngineError> {
        if self.shutting_down {
            // An open still waiting when shutdown began would leave a
            // handle nobody releases.
            return Err(EngineError::ShuttingDown);
        }
        let now = self.now;
        let file_id = match self.paths.get(path) {
            Some(&id) => id,
            None => {
                let id = FileId(self.next_file);
                self.next_file = self.next_file.saturating_add(1);
                self.files.insert(
                    id,
                    File {
                        path: Some(path.to_string()),
                        handles: 0,
                        size: 0,
                        mtime_ns,
                        etag: None,
                        remote_len: 0,
                        committed_size: 0,
                        layout: Layout::Unknown,
                        blocks: BTreeMap::new(),
                        changed: false,
                        commit: CommitPhase::Idle,
                        commits_started: 0,
                        commits_finished: 0,
                        error: None,
                        loading: None,
                        validated_at: None,
                        background_stages: 0,
                        reload: false,
                        gone: false,
                        generation: 0,
                    },
                );
                self.paths.insert(path.to_string(), id);
                id
            }
        };
        let attribute_timeout = self.config.attribute_timeout_ms;
        let file = self
            .files
            .get_mut(&file_id)
            .ok_or_else(|| internal("open of an unknown file"))?;
        if file.loading.is_some() {
            return Ok(Step::WaitIo);
        }
        let busy = file.handles > 0 || file.changed || file.commit != CommitPhase::Idle;
        #[cfg(madsim)]
        let busy = busy && !(self.config.faults.open_ignores_pending_commit && file.handles == 0);
        if file.error.is_some() && !busy {
            // A failed load: report it once and forget it.
            let error = file.error.take().unwrap_or(EngineError::Storage(path.to_string()));
            self.discard_if_unused(file_id);
            return Ok(Step::Done(Err(error)));
        }
        let fresh = file
            .validated_at
            .is_some_and(|at| now.0.saturating_sub(at.0) < attribute_timeout);
        let needs_layout = mode.write && matches!(file.layout, Layout::Unknown) && file.etag.is_some();
        if (!busy && !fresh) || needs_layout {
            let with_blocks = mode.write;
            let io = self.queue_io(
                file_id,
                path.to_string(),
                IoKind::Load { with_blocks },
                IoPurpose::Load,
                Priority::Demand,
            );
            let file = self
                .files
                .get_mut(&file_id)
                .ok_or_else(|| internal("open of an unknown file"))?;
            file.loading = Some(io);
            // Not "fresh" until the load answers.
            file.validated_at = None;
            return Ok(Step::WaitIo);
        }
        let exists = file.etag.is_some() || busy;
        if !exists && !mode.create {
            self.discard_if_unused(file_id);
            return Ok(Step::Done(Err(EngineError::NotFound(path.to_string()))));
        }
        if exists && mode.create && mode.exclusive {
            return Ok(Step::Done(Err(EngineError::Exists(path.to_string()))));
        }
        let truncates = mode.truncate && mode.write;
        let size_now = file.size;
        // Its turn comes even when the file is empty now: a change that
        // arrived before it (a write or a truncate waiting for a buffer or
        // a commit) may still make it longer.
        if truncates && !self.turn_of(seq, file_id) {
            return Ok(Step::WaitTurn);
        }
        if truncates && size_now > 0 {
            if let Some(step) = self.prepare_resize(file_id, 0)? {
                return Ok(step);
            }
            self.set_size(file_id, 0, mtime_ns)?;
        }
        let file = self
            .files
            .get_mut(&file_id)
            .ok_or_else(|| internal("open of an unknown file"))?;
        if !exists {
            file.changed = true;
            file.mtime_ns = mtime_ns;
        }
        let handle = HandleId(self.next_handle);
        self.next_handle = self.next_handle.saturating_add(1);
        file.handles = file.handles.saturating_add(1);
        self.handles.insert(
            handle,
            Handle {
                file: file_id,
                writable: mode.write,
                last_read_end: None,
                last_read_len: 0,
                window: 0,
                streak: 0,
            },
        );
        let size = self.files.get(&file_id).map(|f| f.size).unwrap_or(0);
        Ok(Step::Done(Ok(Reply::Opened { handle, size })))
    }

    fn step_read(&mut self, op: &mut Op) -> Result<Step, EngineError> {
        let handle = match &op.kind {
            OpKind::Read { handle, .. } => *handle,
            _ => return Err(internal("not a read")),
        };
        let file_id = self.handles.get(&handle).ok_or(EngineError::BadHandle(handle.0))?.file;
        let file = self
            .files
            .get(&file_id)
            .ok_or_else(|| internal("handle of an unknown file"))?;
        if file.gone {
            return Err(EngineError::Stale(file.path.clone().unwrap_or_default()));
        }
        if let Some(step) = self.reload_first(file_id)? {
            return Ok(step);
        }
        let file = self
            .files
            .get(&file_id)
            .ok_or_else(|| internal("handle of an unknown file"))?;
        let current_generation = file.generation;
        let OpKind::Read {
            offset,
            end,
            out,
            generation,
            ..
        } = &mut op.kind
        else {
            return Err(internal("not a read"));
        };
        if generation.is_some_and(|g| g != current_generation) {
            // The file moved to a new version: start over, so that one read
            // returns bytes of one version only.
            out.clear();
        }
        *generation = Some(current_generation);
        let block_size = self.config.block_size;
        loop {
            let file = self
                .files
                .get(&file_id)
                .ok_or_else(|| internal("handle of an unknown file"))?;
            let end_now = (*end).min(file.size);
            let position = add(*offset, to_u64(out.len())?)?;
            if position >= end_now {
                break;
            }
            let index = div(position, block_size)?;
            let block_start = mul(index, block_size)?;
            let within = to_usize(sub(position, block_start)?)?;
            let block_len = self.block_len(file.size, index)?;
            let take_end = to_usize(sub(end_now.min(add(block_start, block_len)?), block_start)?)?;
            let partial = file.blocks.get(&index).and_then(|b| b.partial);
            let covered = partial.is_none_or(|(from, to)| from <= within && take_end <= to);
            match file.blocks.get(&index).map(|b| &b.state) {
                Some(BlockState::Ready(_)) if !covered => {
                    // The buffer holds another part of this block.
                    let range = self.miss_range(handle, position, within, take_end, block_len)?;
                    self.refetch(file_id, index, range)?;
                    self.pin_block(&mut op.pinned, file_id, index);
                    return Ok(Step::WaitIo);
                }
                Some(BlockState::Ready(buffer)) => {
                    let shift = partial.map_or(0, |(from, _)| from);
                    let (from, to) = (within.saturating_sub(shift), take_end.saturating_sub(shift));
                    out.extend_from_slice(slice(buffer, from, to)?);
                    let last_use = self.touch();
                    let file = self.files.get_mut(&file_id).ok_or_else(|| internal("unknown file"))?;
                    if let Some(block) = file.blocks.get_mut(&index) {
                        block.last_use = last_use;
                        block.prefetched = false;
                    }
                    if op.pinned.is_some() {
                        self.unpin(op.pinned.take());
                    } else {
                        self.stats.hits = self.stats.hits.saturating_add(1);
                    }
                }
                Some(BlockState::Loading(_)) | Some(BlockState::Uploading(_)) => {
                    self.pin_block(&mut op.pinned, file_id, index);
                    return Ok(Step::WaitIo);
                }
                Some(BlockState::Staged) => {
                    // Uncommitted blocks cannot be read back from storage:
                    // commit, then read the committed version. A pin taken
                    // while the block was uploading goes: the commit drops it.
                    self.unpin(op.pinned.take());
                    self.request_commit(file_id)?;
                    return Ok(Step::WaitIo);
                }
                None => {
                    if let (true, Some(error)) = (file.changed, &file.error) {
                        // What was written here may have been dropped.
                        return Err(error.clone());
                    }
                    if block_start >= file.remote_len {
                        // A hole, or past what storage holds: zeros, no I/O.
                        let zeros = take_end.checked_sub(within).ok_or_else(|| internal("read range"))?;
                        let filled = out.len().checked_add(zeros).ok_or_else(|| internal("read size"))?;
                        out.resize(filled, 0);
                        continue;
                    }
                    if self.committing(file_id) {
                        return Ok(Step::WaitIo);
                    }
                    let range = self.miss_range(handle, position, within, take_end, block_len)?;
                    if let Some((from, _)) = range {
                        if add(block_start, to_u64(from)?)? >= file.remote_len {
                            // Everything asked for lies past what storage holds.
                            let zeros = take_end.checked_sub(within).ok_or_else(|| internal("read range"))?;
                            let filled = out.len().checked_add(zeros).ok_or_else(|| internal("read size"))?;
                            out.resize(filled, 0);
                            continue;
                        }
                    }
                    let Some(buffer) = self.take_buffer(false) else {
                        self.start_write_back()?;
                        return Ok(Step::WaitBuffer);
                    };
                    op.deadline = None;
                    self.fetch_block(file_id, index, buffer, range, Priority::Demand)?;
                    self.pin_block(&mut op.pinned, file_id, index);
                    self.read_ahead_from_start(handle, position)?;
                    return Ok(Step::WaitIo);
                }
            }
        }
        let OpKind::Read { offset, out, .. } = &mut op.kind else {
            return Err(internal("not a read"));
        };
        let data = std::mem::take(out);
        let read_end = add(*offset, to_u64(data.len())?)?;
        self.after_read(handle, *offset, read_end)?;
        Ok(Step::Done(Ok(Reply::Data(data))))
    }

    /// When storage was found to hold another version of an unchanged file,
    /// loads it before anything else reads from storage; the step to wait with.
    fn reload_first(&mut self, file_id: FileId) -> Result<Option<Step>, EngineError> {
        let file = self.files.get(&file_id).ok_or_else(|| internal("unknown file"))?;
        if !file.reload {
            return Ok(None);
        }
        if file.loading.is_none() {
            let Some(path) = file.path.clone() else {
                return Err(EngineError::Stale("(deleted while open)".to_string()));
            };
            let io = self.queue_io(
                file_id,
                path,
                IoKind::Load { with_blocks: true },
                IoPurpose::Load,
                Priority::Demand,
            );
            let file = self.files.get_mut(&file_id).ok_or_else(|| internal("unknown file"))?;
            file.loading = Some(io);
        }
        Ok(Some(Step::WaitIo))
    }

    /// What a read miss fetches: the whole block for a sequential reader,
    /// only the 4 KiB-aligned range asked for (block-relative) for a random one.
    fn miss_range(
        &self,
        handle: HandleId,
        position: u64,
        within: usize,
        take_end: usize,
        block_len: u64,
    ) -> Result<Option<(usize, usize)>, EngineError> {
        let sequential = self
            .handles
            .get(&handle)
            .is_none_or(|state| state.window > 0 || (state.last_read_end.is_none() && position == 0));
        if sequential {
            return Ok(None);
        }
        // Small blocks (in tests) get a proportionally small alignment.
        let align = to_usize(self.config.block_size.checked_div(8).unwrap_or(1))?.clamp(1, PARTIAL_FETCH_ALIGN);
        let from = within.checked_div(align).unwrap_or(0).saturating_mul(align);
        let to = take_end.div_ceil(align).saturating_mul(align).min(to_usize(block_len)?);
        if from == 0 && to == to_usize(block_len)? {
            return Ok(None);
        }
        Ok(Some((from, to)))
    }

    /// Replaces a block that holds only part of its content by a fetch of
    /// `range` (all of it when `None`) into the same buffer; pins stay.
    fn refetch(&mut self, file_id: FileId, index: u64, range: Option<(usize, usize)>) -> Result<(), EngineError> {
        let Some(block) = self.files.get_mut(&file_id).and_then(|f| f.blocks.remove(&index)) else {
            return Err(internal("refetch of a missing block"));
        };
        let BlockState::Ready(buffer) = block.state else {
            return Err(internal("refetch of a block not in memory"));
        };
        self.fetch_block(file_id, index, buffer, range, Priority::Demand)?;
        if let Some(entry) = self.files.get_mut(&file_id).and_then(|f| f.blocks.get_mut(&index)) {
            entry.pins = block.pins;
        }
        Ok(())
    }

    /// Sequential detection and read-ahead for one handle.
    fn after_read(&mut self, handle: HandleId, offset: u64, end: u64) -> Result<(), EngineError> {
        let max_window = self.config.prefetch_blocks;
        let block_size = self.config.block_size;
        let Some(state) = self.handles.get_mut(&handle) else {
            return Ok(());
        };
        // The slack stays small next to the file: a random reader landing
        // within it of its previous read twice in a row would otherwise
        // count as sequential and read whole blocks ahead for nothing.
        let slack = state
            .last_read_len
            .saturating_mul(REORDER_SLACK_READS)
            .max(REORDER_SLACK_MIN)
            .min(block_size);
        let sequential = match state.last_read_end {
            Some(previous) => offset <= previous && previous.saturating_sub(offset) <= slack,
            None => offset == 0,
        };
        state.streak = if sequential { state.streak.saturating_add(1) } else { 0 };
        // One adjacent read proves little (the kernel reads ahead next to a
        // random read too): the window opens after a streak, or at once for
        // a reader starting at the beginning of the file.
        let opens = state.streak >= SEQUENTIAL_STREAK || (offset == 0 && state.streak > 0);
        state.window = if opens {
            state
                .window
                .saturating_mul(2)
                .clamp(1, max_window.max(1))
                .min(max_window)
        } else {
            0
        };
        state.last_read_end = Some(end);
        state.last_read_len = end.saturating_sub(offset);
        let window = state.window;
        let file_id = state.file;
        if window == 0 || end == 0 {
            return Ok(());
        }
        let current_block = div(end.saturating_sub(1), block_size)?;
        self.read_ahead(handle, file_id, current_block, window)
    }

    /// A reader's first read starting at offset 0 missed block 0: reading a
    /// file from its start is a strong sign that it will be read through,
    /// so read-ahead starts with the demand fetch rather than one block
    /// latency later, with enough blocks to keep the storage requests that
    /// the demand fetch leaves idle busy.
    fn read_ahead_from_start(&mut self, handle: HandleId, position: u64) -> Result<(), EngineError> {
        let Some(state) = self.handles.get_mut(&handle) else {
            return Ok(());
        };
        if state.last_read_end.is_some() || position != 0 || state.window > 0 {
            return Ok(());
        }
        let idle = self.config.parallelism.saturating_sub(1).max(1);
        let window = self.config.prefetch_blocks.min(u32::try_from(idle).unwrap_or(u32::MAX));
        state.window = window;
        let file_id = state.file;
        if window == 0 {
            return Ok(());
        }
        self.read_ahead(handle, file_id, 0, window)
    }

    /// Fetches up to `window` blocks after block `current_block` that are
    /// not cached yet, within the read-ahead budget.
    fn read_ahead(
        &mut self,
        handle: HandleId,
        file_id: FileId,
        current_block: u64,
        window: u32,
    ) -> Result<(), EngineError> {
        let block_size = self.config.block_size;
        // A global budget: prefetch may hold at most half the pool.
        let budget = self.config.pool_buffers.checked_div(2).unwrap_or(0);
        let mut prefetched = self
            .files
            .values()
            .flat_map(|f| f.blocks.values())
            .filter(|b| b.prefetched)
            .count();
        for step in 1..=u64::from(window) {
            if prefetched >= budget {
                break;
            }
            let index = add(current_block, step)?;
            let Some(file) = self.files.get(&file_id) else {
                break;
            };
            if index >= self.block_count(file.size) || mul(index, block_size)? >= file.remote_len {
                break;
            }
            if file.blocks.contains_key(&index) || file.path.is_none() || file.etag.is_none() || file.reload {
                continue;
            }
            if file.changed && file.error.is_some() {
                // What was written may have been dropped: storage has only
                // the version it replaced, which reads must never show.
                break;
            }
            let Some(buffer) = self.take_buffer(true) else {
                // Memory is short: read ahead less until buffers free up.
                if let Some(state) = self.handles.get_mut(&handle) {
                    state.window = state.window.checked_div(2).unwrap_or(0);
                }
                break;
            };
            prefetched = prefetched.saturating_add(1);
            self.fetch_block(file_id, index, buffer, None, Priority::Prefetch)?;
        }
        Ok(())
    }

    fn step_write(&mut self, op: &mut Op) -> Result<Step, EngineError> {
        let OpKind::Write {
            handle,
            offset,
            data,
            done,
            mtime_ns,
        } = &mut op.kind
        else {
            return Err(internal("not a write"));
        };
        let (handle, offset, mtime_ns) = (*handle, *offset, *mtime_ns);
        let state = self.handles.get(&handle).ok_or(EngineError::BadHandle(handle.0))?;
        if !state.writable {
            return Err(EngineError::NotWritable(handle.0));
        }
        let file_id = state.file;
        let block_size = self.config.block_size;
        let max = self.max_file_size();
        #[cfg(madsim)]
        let max = if self.config.faults.skip_size_check {
            u64::MAX
        } else {
            max
        };
        let total = to_u64(data.len())?;
        let write_end = offset
            .checked_add(total)
            .filter(|end| *end <= max)
            .ok_or(EngineError::FileTooLarge { offset, max })?;
        let file = self
            .files
            .get(&file_id)
            .ok_or_else(|| internal("handle of an unknown file"))?;
        if let Some(error) = &file.error {
            return Err(error.clone());
        }
        if !self.turn_of(op.seq, file_id) {
            return Ok(Step::WaitTurn);
        }
        let file = self
            .files
            .get(&file_id)
            .ok_or_else(|| internal("handle of an unknown file"))?;
        if file.reload && *done == 0 {
            if let Some(step) = self.reload_first(file_id)? {
                return Ok(step);
            }
        }
        let file = self
            .files
            .get(&file_id)
            .ok_or_else(|| internal("handle of an unknown file"))?;
        // A write that has stored bytes goes on while a commit stages, and
        // the commit waits for it to end, so that it holds all of the write
        // or none; a write yet to store a byte waits for the commit.
        let commit_waits = match file.commit {
            CommitPhase::Idle => false,
            CommitPhase::Staging => *done == 0,
            CommitPhase::Committing(_) => true,
        };
        if commit_waits || file.background_stages >= max_background_stages(&self.config) {
            return Ok(Step::WaitIo);
        }
        if *done == 0 {
            // A block that exists only as an uncommitted staged block must be
            // committed before it can be read back; do that before storing a
            // byte, so that no commit ever holds half of this write.
            let first = div(offset, block_size)?;
            let last = div(write_end.saturating_sub(1), block_size)?;
            let size = file.size;
            let mut needs_commit = false;
            for (&index, block) in file.blocks.range(first..=last) {
                if !matches!(block.state, BlockState::Staged) {
                    continue;
                }
                let block_start = mul(index, block_size)?;
                let block_end = add(block_start, self.block_len(size, index)?)?;
                let covered = offset <= block_start && write_end >= block_end;
                needs_commit |= !covered;
            }
            if needs_commit {
                // The commit may need the block this request waited on.
                let pinned = op.pinned.take();
                self.unpin(pinned);
                self.request_commit(file_id)?;
                return Ok(Step::WaitIo);
            }
        }
        let file = self
            .files
            .get(&file_id)
            .ok_or_else(|| internal("handle of an unknown file"))?;
        if *done == 0 && offset > file.size {
            // Writing past the end: wait, before taking any buffer, until
            // the gap can become zeros.
            if let Some(step) = self.prepare_resize(file_id, offset)? {
                return Ok(step);
            }
        }
        while *done < data.len() {
            let position = add(offset, to_u64(*done)?)?;
            let index = div(position, block_size)?;
            let block_start = mul(index, block_size)?;
            let within = sub(position, block_start)?;
            let chunk_end = write_end.min(add(block_start, block_size)?);
            let chunk = to_usize(sub(chunk_end, position)?)?;
            let file = self
                .files
                .get(&file_id)
                .ok_or_else(|| internal("handle of an unknown file"))?;
            let current_len = self.block_len(file.size, index)?;
            let new_len = current_len.max(sub(chunk_end, block_start)?);
            let extends = *done == 0 && offset > file.size;
            // A block to put in with the bytes written, when it has none.
            let fresh = match file.blocks.get(&index).map(|b| &b.state) {
                Some(BlockState::Ready(_)) if file.blocks.get(&index).is_some_and(|b| b.partial.is_some()) => {
                    // Writing needs the whole block in memory.
                    self.refetch(file_id, index, None)?;
                    self.pin_block(&mut op.pinned, file_id, index);
                    return Ok(Step::WaitIo);
                }
                Some(BlockState::Ready(_)) => None,
                Some(BlockState::Loading(_)) | Some(BlockState::Uploading(_)) => {
                    self.pin_block(&mut op.pinned, file_id, index);
                    return Ok(Step::WaitIo);
                }
                Some(BlockState::Staged) => {
                    self.unpin(op.pinned.take());
                    let covers_all = within == 0 && sub(chunk_end, block_start)? >= current_len;
                    if !covers_all {
                        if *done > 0 {
                            // Evicted since the check above, while this write
                            // ran: a commit now would hold part of it, so the
                            // write ends short, as POSIX allows, and the
                            // caller's next write commits before storing.
                            return Ok(Step::Done(Ok(Reply::Written(u32::try_from(*done).unwrap_or(u32::MAX)))));
                        }
                        self.request_commit(file_id)?;
                        return Ok(Step::WaitIo);
                    }
                    let Some(buffer) = self.take_buffer(false) else {
                        self.start_write_back()?;
                        return Ok(Step::WaitBuffer);
                    };
                    Some(buffer)
                }
                None => {
                    let remote_end = file.remote_len.min(add(block_start, current_len)?);
                    let has_remote = remote_end > block_start;
                    let covers_remote = within == 0 && chunk_end >= remote_end;
                    let Some(mut buffer) = self.take_buffer(false) else {
                        self.start_write_back()?;
                        return Ok(Step::WaitBuffer);
                    };
                    op.deadline = None;
                    if has_remote && !covers_remote {
                        self.fetch_block(file_id, index, buffer, None, Priority::Demand)?;
                        self.pin_block(&mut op.pinned, file_id, index);
                        return Ok(Step::WaitIo);
                    }
                    // Only the bytes the write does not cover need zeros.
                    zero(&mut buffer, 0, to_usize(within)?)?;
                    zero(&mut buffer, to_usize(sub(chunk_end, block_start)?)?, to_usize(new_len)?)?;
                    Some(buffer)
                }
            };
            if extends {
                // The file grows to the write's offset in the step that
                // stores its first bytes, so that a write failing before
                // that leaves no trace. Taking a buffer may have evicted the
                // old last block to staged-only since the check above.
                if let Some(step) = self.prepare_resize(file_id, offset)? {
                    if let Some(buffer) = fresh {
                        self.free_buffers.push(buffer);
                    }
                    return Ok(step);
                }
                self.set_size(file_id, offset, mtime_ns)?;
            }
            if let Some(buffer) = fresh {
                self.insert_dirty_block(file_id, index, buffer)?;
            }
            if op.pinned.is_some() {
                self.unpin(op.pinned.take());
            }
            let source = slice(data, *done, add(to_u64(*done)?, to_u64(chunk)?).and_then(to_usize)?)?;
            let last_use = self.touch();
            let file = self.files.get_mut(&file_id).ok_or_else(|| internal("unknown file"))?;
            let block = file
                .blocks
                .get_mut(&index)
                .ok_or_else(|| internal("written block vanished"))?;
            let BlockState::Ready(buffer) = &mut block.state else {
                return Err(internal("write into a block not in memory"));
            };
            if new_len > current_len {
                // Growing the last block: bytes between its end and the write are zeros.
                zero(buffer, to_usize(current_len)?, to_usize(within)?)?;
            }
            copy_into(buffer, to_usize(within)?, source)?;
            block.dirty = true;
            block.staged = None;
            block.prefetched = false;
            block.last_use = last_use;
            file.size = file.size.max(chunk_end);
            file.changed = true;
            file.mtime_ns = mtime_ns;
            *done = done.saturating_add(chunk);
            let block_full = sub(chunk_end, block_start)? == block_size;
            if block_full && file.path.is_some() {
                // A finished block goes to storage while the writer goes on.
                self.stage_block(file_id, index, Priority::WriteBack)?;
            }
        }
        Ok(Step::Done(Ok(Reply::Written(
            u32::try_from(data.len()).unwrap_or(u32::MAX),
        ))))
    }

    /// Checks whether the blocks a resize touches are ready for it. Returns
    /// the step to wait with, or `None` when the resize can happen now.
    fn prepare_resize(&mut self, file_id: FileId, new_size: u64) -> Result<Option<Step>, EngineError> {
        let block_size = self.config.block_size;
        let file = self.files.get(&file_id).ok_or_else(|| internal("unknown file"))?;
        if file.commit != CommitPhase::Idle {
            return Ok(Some(Step::WaitIo));
        }
        // The blocks whose length changes: the old last and the new last.
        let mut touched = Vec::new();
        for size in [file.size, new_size] {
            if let Some(index) = partial_block(size, block_size) {
                touched.push(index);
            }
        }
        for index in touched {
            let file = self.files.get(&file_id).ok_or_else(|| internal("unknown file"))?;
            if index >= self.block_count(file.size) {
                continue;
            }
            let partial = file.blocks.get(&index).is_some_and(|b| b.partial.is_some());
            match file.blocks.get(&index).map(|b| &b.state) {
                Some(BlockState::Ready(_)) if partial => {
                    // Its length changes: the whole content is needed.
                    self.refetch(file_id, index, None)?;
                    return Ok(Some(Step::WaitIo));
                }
                None | Some(BlockState::Ready(_)) => {}
                Some(BlockState::Loading(_)) | Some(BlockState::Uploading(_)) => return Ok(Some(Step::WaitIo)),
                Some(BlockState::Staged) => {
                    self.request_commit(file_id)?;
                    return Ok(Some(Step::WaitIo));
                }
            }
        }
        Ok(None)
    }

    /// Changes the size of a file whose touched blocks are ready (see
    /// [`Engine::prepare_resize`]).
    fn set_size(&mut self, file_id: FileId, new_size: u64, mtime_ns: u64) -> Result<(), EngineError> {
        let block_size = self.config.block_size;
        let file = self.files.get(&file_id).ok_or_else(|| internal("unknown file"))?;
        let old_size = file.size;
        let new_count = self.block_count(new_size);
        let old_last = partial_block(old_size, block_size);
        let old_last_len = match old_last {
            Some(index) => self.block_len(old_size, index)?,
            None => 0,
        };
        let new_last_len = match old_last {
            Some(index) => self.block_len(new_size, index)?,
            None => 0,
        };
        let new_tail = partial_block(new_size, block_size);
        let file = self.files.get_mut(&file_id).ok_or_else(|| internal("unknown file"))?;
        // Blocks past the new end go; I/O still carrying them is let go.
        let gone: Vec<u64> = file.blocks.range(new_count..).map(|(i, _)| *i).collect();
        let mut freed = Vec::new();
        let mut detached = Vec::new();
        let mut unwanted = Vec::new();
        for index in gone {
            if let Some(block) = file.blocks.remove(&index) {
                match block.state {
                    BlockState::Ready(buffer) => freed.push(buffer),
                    BlockState::Loading(io) => unwanted.push(io),
                    BlockState::Uploading(io) => detached.push(io),
                    BlockState::Staged => {}
                }
            }
        }
        if let Some(index) = old_last {
            if new_last_len > old_last_len {
                if let Some(block) = file.blocks.get_mut(&index) {
                    if let BlockState::Ready(buffer) = &mut block.state {
                        zero(buffer, to_usize(old_last_len)?, to_usize(new_last_len)?)?;
                    }
                }
            }
        }
        for index in [old_last, new_tail].into_iter().flatten() {
            if let Some(block) = file.blocks.get_mut(&index) {
                if matches!(block.state, BlockState::Ready(_)) {
                    block.dirty = true;
                    block.staged = None;
                }
            }
        }
        for op in self.ops.iter_mut() {
            if op.pinned.is_some_and(|(f, index)| f == file_id && index >= new_count) {
                op.pinned = None;
            }
        }
        let file = self.files.get_mut(&file_id).ok_or_else(|| internal("unknown file"))?;
        file.size = new_size;
        file.remote_len = file.remote_len.min(new_size);
        file.changed = true;
        file.mtime_ns = mtime_ns;
        self.free_buffers.extend(freed);
        for io in detached {
            if let Some(task) = self.ios.get_mut(&io) {
                task.detached = true;
            }
        }
        // Nobody can read what lies past the end: its fetches stop now
        // rather than hold a buffer and a place in the queue.
        for io in unwanted {
            self.cancel_io(io);
        }
        Ok(())
    }

    fn step_truncate(&mut self, op: &mut Op) -> Result<Step, EngineError> {
        let OpKind::Truncate { handle, size, mtime_ns } = &op.kind else {
            return Err(internal("not a truncate"));
        };
        let (handle, size, mtime_ns) = (*handle, *size, *mtime_ns);
        let state = self.handles.get(&handle).ok_or(EngineError::BadHandle(handle.0))?;
        if !state.writable {
            return Err(EngineError::NotWritable(handle.0));
        }
        let max = self.max_file_size();
        if size > max {
            return Err(EngineError::FileTooLarge { offset: size, max });
        }
        let file_id = state.file;
        let file = self
            .files
            .get(&file_id)
            .ok_or_else(|| internal("handle of an unknown file"))?;
        if let Some(error) = &file.error {
            return Err(error.clone());
        }
        let reload = file.reload;
        if !self.turn_of(op.seq, file_id) {
            return Ok(Step::WaitTurn);
        }
        if reload {
            if let Some(step) = self.reload_first(file_id)? {
                return Ok(step);
            }
        }
        let file = self
            .files
            .get(&file_id)
            .ok_or_else(|| internal("handle of an unknown file"))?;
        if file.size == size {
            return Ok(Step::Done(Ok(Reply::Done)));
        }
        if let Some(step) = self.prepare_resize(file_id, size)? {
            return Ok(step);
        }
        self.set_size(file_id, size, mtime_ns)?;
        Ok(Step::Done(Ok(Reply::Done)))
    }

    // ----- checks -----

    fn buffer_wait_ms(&self) -> u64 {
        #[cfg(madsim)]
        if self.config.faults.endless_buffer_wait {
            return self.config.buffer_wait_timeout_ms.saturating_mul(1000);
        }
        self.config.buffer_wait_timeout_ms
    }

    /// The file a handle is open on.
    pub fn file_of(&self, handle: HandleId) -> Option<FileId> {
        self.handles.get(&handle).map(|h| h.file)
    }

    /// What one file holds right now. A file the engine has forgotten
    /// still counts the I/O that carries its buffers.
    pub fn activity(&self, file_id: FileId) -> FileActivity {
        let mut activity = FileActivity::default();
        if let Some(file) = self.files.get(&file_id) {
            activity.handles = file.handles;
            activity.pins = file.blocks.values().map(|b| u64::from(b.pins)).sum();
            activity.committing = file.commit != CommitPhase::Idle;
        }
        activity.requests = self
            .ops
            .iter()
            .filter(|op| {
                let handle = match &op.kind {
                    OpKind::Open { path, .. } => return self.paths.get(path) == Some(&file_id),
                    OpKind::Shutdown => return false,
                    OpKind::Read { handle, .. }
                    | OpKind::Write { handle, .. }
                    | OpKind::Flush { handle, .. }
                    | OpKind::Truncate { handle, .. } => handle,
                };
                self.handles.get(handle).is_some_and(|h| h.file == file_id)
            })
            .count();
        for task in self.ios.values().filter(|t| t.file == file_id) {
            if !matches!(task.purpose, IoPurpose::Fetch { .. }) {
                continue;
            }
            activity.fetches = activity.fetches.saturating_add(1);
            if task.priority == Priority::Prefetch {
                activity.prefetches = activity.prefetches.saturating_add(1);
                if task.issued {
                    activity.prefetches_in_flight = activity.prefetches_in_flight.saturating_add(1);
                }
            }
        }
        activity
    }

    /// Resource use right now.
    pub fn occupancy(&self) -> Occupancy {
        let pins = self
            .files
            .values()
            .flat_map(|f| f.blocks.values())
            .map(|b| u64::from(b.pins))
            .sum();
        Occupancy {
            buffers_allocated: self.buffers_allocated,
            buffers_free: self.free_buffers.len(),
            pins,
            io_pending: self.ios.len(),
            io_in_flight: self.in_flight,
            waiting_requests: self.ops.len(),
            open_handles: self.handles.len(),
            files: self.files.len(),
        }
    }

    /// Verifies the engine's internal invariants; the simulation calls it
    /// after every step.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut held = 0usize;
        let mut lent = 0usize;
        let mut pins = 0u64;
        for (&file_id, file) in &self.files {
            let count = self.block_count(file.size);
            let expected_handles = self.handles.values().filter(|h| h.file == file_id).count();
            if usize::try_from(file.handles).ok() != Some(expected_handles) {
                return Err(format!(
                    "file {file_id}: {} handles counted, {expected_handles} exist",
                    file.handles
                ));
            }
            if let Some(path) = &file.path {
                if self.paths.get(path) != Some(&file_id) {
                    return Err(format!("file {file_id}: path {path} does not map back to it"));
                }
            }
            if file.remote_len > file.size || file.remote_len > file.committed_size {
                return Err(format!(
                    "file {file_id}: remote length {} past size {} or committed size {}",
                    file.remote_len, file.size, file.committed_size
                ));
            }
            for (&index, block) in &file.blocks {
                if index >= count {
                    return Err(format!("file {file_id}: block {index} past the end ({count} blocks)"));
                }
                pins = pins.saturating_add(u64::from(block.pins));
                match &block.state {
                    BlockState::Ready(buffer) => {
                        held = held.saturating_add(1);
                        if to_u64(buffer.len()).ok() != Some(self.config.block_size) {
                            return Err(format!(
                                "file {file_id}: block {index} has a buffer of {} bytes",
                                buffer.len()
                            ));
                        }
                    }
                    BlockState::Loading(io) | BlockState::Uploading(io) => {
                        if !self.ios.contains_key(io) {
                            return Err(format!("file {file_id}: block {index} waits on unknown I/O {io}"));
                        }
                    }
                    BlockState::Staged => {
                        if block.staged.is_none() || block.dirty {
                            return Err(format!(
                                "file {file_id}: block {index} is out of memory without a staged copy"
                            ));
                        }
                    }
                }
                if let Some((from, to)) = block.partial {
                    if from >= to || block.dirty || to_u64(to.saturating_sub(from)).ok() > Some(self.config.block_size)
                    {
                        return Err(format!(
                            "file {file_id}: block {index} holds part {from}..{to} dirty={}",
                            block.dirty
                        ));
                    }
                }
                if block.dirty && !matches!(block.state, BlockState::Ready(_) | BlockState::Uploading(_)) {
                    return Err(format!("file {file_id}: dirty block {index} has no data"));
                }
            }
        }
        for task in self.ios.values() {
            let carries_buffer = matches!(task.purpose, IoPurpose::Fetch { .. } | IoPurpose::Stage { .. });
            if carries_buffer {
                lent = lent.saturating_add(1);
            }
        }
        let accounted = self.free_buffers.len().saturating_add(held).saturating_add(lent);
        if accounted != self.buffers_allocated {
            return Err(format!(
                "buffers: {} free + {held} held + {lent} lent != {} allocated",
                self.free_buffers.len(),
                self.buffers_allocated
            ));
        }
        if self.buffers_allocated > self.config.pool_buffers {
            return Err(format!(
                "{} buffers allocated, budget {}",
                self.buffers_allocated, self.config.pool_buffers
            ));
        }
        let pin_holders = self.ops.iter().filter(|op| op.pinned.is_some()).count();
        if to_u64(pin_holders).ok() != Some(pins) {
            let held: Vec<(FileId, u64)> = self.ops.iter().filter_map(|op| op.pinned).collect();
            let counted: Vec<(FileId, u64, u32)> = self
                .files
                .iter()
                .flat_map(|(id, f)| {
                    f.blocks
                        .iter()
                        .filter(|(_, b)| b.pins > 0)
                        .map(move |(i, b)| (*id, *i, b.pins))
                })
                .collect();
            return Err(format!(
                "{pins} pins but {pin_holders} requests hold one: held {held:?}, counted {counted:?}"
            ));
        }
        let issued = self.ios.values().filter(|t| t.issued).count();
        if issued != self.in_flight || self.in_flight > self.config.parallelism {
            return Err(format!(
                "{} in flight, {issued} issued, parallelism {}",
                self.in_flight, self.config.parallelism
            ));
        }
        for (&(priority, id), command) in &self.queued {
            let in_place = self
                .ios
                .get(&id)
                .is_some_and(|t| !t.issued && command.id == id && self.queue_key(t.priority, id) == (priority, id));
            if !in_place {
                return Err(format!("queued I/O {id} is not where its task says"));
            }
        }
        if self.queued.len().saturating_add(issued) != self.ios.len() {
            return Err(format!(
                "{} queued + {issued} issued != {} I/O tasks",
                self.queued.len(),
                self.ios.len()
            ));
        }
        let first_change = self.waiting_changes();
        for op in &self.ops {
            let waits_on_time = op.deadline.is_some();
            let has_io = !self.ios.is_empty();
            // The change ahead of it has the deadline or the I/O.
            let waits_turn = self
                .change_target(&op.kind)
                .and_then(|file| first_change.get(&file))
                .is_some_and(|&first| first < op.seq);
            if !waits_on_time && !has_io && !waits_turn {
                return Err(format!(
                    "request {} waits with no I/O pending and no deadline",
                    op.request
                ));
            }
        }
        for handle in self.handles.values() {
            if !self.files.contains_key(&handle.file) {
                return Err(format!("a handle points to unknown file {}", handle.file));
            }
        }
        Ok(())
    }
}

/// The reply to a request that failed part-way: a write that already
/// stored some bytes reports them, everything else reports the error.
fn partial_result(op: &Op, error: EngineError) -> Result<Reply, EngineError> {
    match &op.kind {
        OpKind::Write { done, .. } if *done > 0 => Ok(Reply::Written(u32::try_from(*done).unwrap_or(u32::MAX))),
        _ => Err(error),
    }
}

/// The index of the last block of a file of `size` bytes when that block
/// is shorter than a whole block.
fn partial_block(size: u64, block_size: u64) -> Option<u64> {
    match size.checked_rem(block_size) {
        Some(0) | None => None,
        Some(_) => size.checked_div(block_size),
    }
}

/// How a committed block list can be reused.
fn layout_of(blocks: Option<&[(BlockId, u64)]>, size: u64, block_size: u64) -> Layout {
    let Some(blocks) = blocks else {
        return Layout::Unknown;
    };
    let expected = size.div_ceil(block_size);
    if u64::try_from(blocks.len()).ok() != Some(expected) {
        return Layout::Opaque;
    }
    let mut remaining = size;
    let mut ids = Vec::with_capacity(blocks.len());
    for (id, len) in blocks {
        let want = remaining.min(block_size);
        if *len != want || id.0.len() != BLOCK_ID_LEN {
            return Layout::Opaque;
        }
        remaining = remaining.saturating_sub(want);
        ids.push(id.clone());
    }
    Layout::Uniform(ids)
}
