//! The shell: owns one engine, carries out its effects on the runtime
//! (storage requests with timeouts, retries with jittered backoff, and
//! cancellation), routes replies to the callers waiting for them, and
//! exposes the filesystem API. Namespace operations that do not touch file
//! data (listing, mkdir, rmdir, unlink, rename) go to storage directly and
//! tell the engine what changed.
//!
//! The engine sits behind one mutex that is never held across an await.
//! Time comes from `tokio::time` and randomness from a seeded ChaCha RNG, so
//! the same code runs deterministically under the simulator.

use crate::fs::{DirEntry, FileAttr, FileHandle, FileKind, FsError, FsResult, FsStats, OpenOptions};
use crate::storage::{BlobStore, BlockId, Condition, ETag, StorageError};
use blobcache_engine as engine;
use blobcache_engine::{
    CommitCondition, Effect, Engine, EngineConfig, EngineError, HandleId, IoCommand, IoCompletion, IoDone, IoError,
    IoErrorKind, IoId, IoKind, Millis, OpenMode, RemoteVersion, Reply, Request, RequestId,
};
use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;

/// Tuning of the cache, derived from the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheOptions {
    /// Size of one block in bytes (`block-size-mb`).
    pub block_size: u64,
    /// Memory budget for block buffers in bytes (`mem-size-mb`).
    pub memory_bytes: u64,
    /// Blocks read ahead of a sequential reader (`prefetch`).
    pub prefetch_blocks: u32,
    /// Storage requests in flight at once (`parallelism`).
    pub parallelism: u32,
    /// How long attributes and listings are trusted (`attribute-expiration-sec`).
    pub attribute_timeout: Duration,
    /// Time limit of one storage request before it is abandoned and retried.
    pub request_timeout: Duration,
    /// Attempts for a request that fails with a transient error.
    pub max_attempts: u32,
    /// Seed of the random numbers used for retry jitter and block id nonces.
    pub seed: u64,
    /// Audit faults put back on purpose (simulation builds only).
    #[cfg(madsim)]
    pub faults: engine::SimFaults,
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions {
            block_size: 16 << 20,
            memory_bytes: 1 << 30,
            prefetch_blocks: 11,
            parallelism: 32,
            attribute_timeout: Duration::from_secs(120),
            request_timeout: Duration::from_secs(60),
            max_attempts: 5,
            seed: 0,
            #[cfg(madsim)]
            faults: engine::SimFaults::default(),
        }
    }
}

/// How long a request may wait for a cache buffer before failing.
const BUFFER_WAIT_TIMEOUT: Duration = Duration::from_secs(60);
/// First retry delay; doubled on each attempt, with jitter.
const RETRY_BASE_DELAY: Duration = Duration::from_millis(100);
/// Longest delay between two attempts.
const RETRY_MAX_DELAY: Duration = Duration::from_secs(10);
/// How long an idle caller sleeps when the engine has no deadline.
const IDLE_WAIT: Duration = Duration::from_secs(3600);

struct EngineState {
    engine: Engine,
    waiters: BTreeMap<RequestId, oneshot::Sender<Result<Reply, EngineError>>>,
    cancels: BTreeMap<IoId, oneshot::Sender<()>>,
    next_request: u64,
}

struct Inner {
    store: Arc<dyn BlobStore>,
    options: CacheOptions,
    state: Mutex<EngineState>,
    rng: Mutex<ChaCha8Rng>,
    /// Woken after every engine step, so that callers sleeping until the
    /// old next deadline see a new, earlier one.
    stepped: tokio::sync::Notify,
    attrs: Mutex<BTreeMap<String, (FileAttr, tokio::time::Instant)>>,
    start: tokio::time::Instant,
    mounted_at: SystemTime,
}

/// A mounted container.
#[derive(Clone)]
pub struct BlobFs {
    inner: Arc<Inner>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take the whole filesystem down with it.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn from_ns(ns: u64) -> SystemTime {
    UNIX_EPOCH.checked_add(Duration::from_nanos(ns)).unwrap_or(UNIX_EPOCH)
}

fn to_ns(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The one place where engine errors become filesystem errors.
fn fs_error(error: EngineError) -> FsError {
    match error {
        EngineError::NotFound(path) => FsError::NotFound(path),
        EngineError::Exists(path) => FsError::Exists(path),
        EngineError::BadHandle(handle) | EngineError::NotWritable(handle) => FsError::BadHandle(handle),
        EngineError::FileTooLarge { .. } => FsError::FileTooLarge(error.to_string()),
        EngineError::Stale(path) => FsError::Stale(path),
        EngineError::Forbidden(message) => FsError::PermissionDenied(message),
        EngineError::TimedOut(message) => FsError::TimedOut(message),
        EngineError::ShuttingDown => FsError::ShuttingDown,
        EngineError::Busy(_)
        | EngineError::WriteFailed { .. }
        | EngineError::Storage(_)
        | EngineError::InvalidConfig(_)
        | EngineError::Internal(_) => FsError::Io(error.to_string()),
    }
}

/// The one place where storage errors of namespace operations become
/// filesystem errors.
fn storage_error(path: &str, error: StorageError) -> FsError {
    match error {
        StorageError::NotFound(_) => FsError::NotFound(path.to_string()),
        StorageError::PreconditionFailed(_) | StorageError::Conflict(_) => FsError::Exists(path.to_string()),
        StorageError::Forbidden(message) => FsError::PermissionDenied(message),
        StorageError::Timeout => FsError::TimedOut(format!("storage request for {path}")),
        StorageError::Invalid(message) => FsError::InvalidName(format!("{path}: {message}")),
        other => FsError::Io(format!("{path}: {other}")),
    }
}

fn io_error(error: &StorageError) -> IoError {
    let kind = match error {
        StorageError::NotFound(_) => IoErrorKind::NotFound,
        StorageError::PreconditionFailed(_) => IoErrorKind::PreconditionFailed,
        StorageError::Forbidden(_) => IoErrorKind::Forbidden,
        StorageError::Timeout => IoErrorKind::TimedOut,
        _ => IoErrorKind::Failed,
    };
    IoError {
        kind,
        message: error.to_string(),
    }
}

fn check_path(path: &str) -> FsResult<()> {
    if path.starts_with('/') || path.ends_with('/') || path.split('/').any(|c| c.is_empty() && !path.is_empty()) {
        return Err(FsError::InvalidName(path.to_string()));
    }
    Ok(())
}

fn parent_prefix(path: &str) -> String {
    match path.rfind('/') {
        Some(index) => path.get(..=index).unwrap_or_default().to_string(),
        None => String::new(),
    }
}

fn dir_prefix(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!("{path}/")
    }
}

impl BlobFs {
    pub fn new(store: Arc<dyn BlobStore>, options: CacheOptions) -> Result<BlobFs, FsError> {
        let invalid = |message: String| FsError::InvalidName(message);
        let pool_buffers = options
            .memory_bytes
            .checked_div(options.block_size)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| invalid(format!("block size {} is not valid", options.block_size)))?;
        let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
        #[cfg(madsim)]
        let mut options = options;
        #[cfg(madsim)]
        if options.faults.shared_block_ids {
            rng = ChaCha8Rng::seed_from_u64(0);
        }
        #[cfg(madsim)]
        if options.faults.no_request_timeout {
            options.request_timeout = Duration::from_secs(100 * 24 * 3600);
        }
        let config = EngineConfig {
            block_size: options.block_size,
            pool_buffers,
            parallelism: usize::try_from(options.parallelism).unwrap_or(usize::MAX),
            prefetch_blocks: options.prefetch_blocks,
            buffer_wait_timeout_ms: u64::try_from(BUFFER_WAIT_TIMEOUT.as_millis()).unwrap_or(u64::MAX),
            attribute_timeout_ms: u64::try_from(options.attribute_timeout.as_millis()).unwrap_or(u64::MAX),
            max_waiting_requests: 4096,
            block_id_nonce: rng.gen(),
            #[cfg(madsim)]
            faults: options.faults,
        };
        let engine = Engine::new(config).map_err(|e| invalid(e.to_string()))?;
        Ok(BlobFs {
            inner: Arc::new(Inner {
                store,
                options,
                state: Mutex::new(EngineState {
                    engine,
                    waiters: BTreeMap::new(),
                    cancels: BTreeMap::new(),
                    next_request: 1,
                }),
                rng: Mutex::new(rng),
                stepped: tokio::sync::Notify::new(),
                attrs: Mutex::new(BTreeMap::new()),
                start: tokio::time::Instant::now(),
                mounted_at: SystemTime::now(),
            }),
        })
    }

    pub fn options(&self) -> &CacheOptions {
        &self.inner.options
    }

    pub fn store(&self) -> &Arc<dyn BlobStore> {
        &self.inner.store
    }

    /// Counters of the engine, for metrics and tests.
    pub fn engine_stats(&self) -> (engine::EngineStats, engine::Occupancy) {
        let state = lock(&self.inner.state);
        (state.engine.stats(), state.engine.occupancy())
    }

    /// The engine's file behind an open handle (used by the simulation).
    pub fn file_of(&self, handle: FileHandle) -> Option<engine::FileId> {
        lock(&self.inner.state).engine.file_of(HandleId(handle.0))
    }

    /// What one file holds of the cache right now (used by the simulation).
    pub fn file_activity(&self, file: engine::FileId) -> engine::FileActivity {
        lock(&self.inner.state).engine.activity(file)
    }

    /// Checks the engine's invariants (used by the simulation).
    pub fn check_invariants(&self) -> Result<(), String> {
        lock(&self.inner.state).engine.check_invariants()
    }

    // ----- the engine driver -----

    fn millis(&self) -> Millis {
        let elapsed = tokio::time::Instant::now().saturating_duration_since(self.inner.start);
        Millis(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
    }

    /// Sends a request to the engine and waits for its reply, ticking the
    /// engine's clock at its deadlines meanwhile.
    async fn call(&self, request: Request) -> Result<Reply, EngineError> {
        let (sender, mut receiver) = oneshot::channel();
        {
            let mut state = lock(&self.inner.state);
            let id = RequestId(state.next_request);
            state.next_request = state.next_request.saturating_add(1);
            state.waiters.insert(id, sender);
            let now = self.millis();
            state.engine.handle(now, id, request);
            self.drain(&mut state);
        }
        loop {
            let stepped = self.inner.stepped.notified();
            let deadline = lock(&self.inner.state).engine.next_deadline();
            let sleep_for = match deadline {
                Some(Millis(at)) => Duration::from_millis(at.saturating_sub(self.millis().0)),
                None => IDLE_WAIT,
            };
            tokio::select! {
                biased;
                reply = &mut receiver => {
                    return reply.unwrap_or(Err(EngineError::ShuttingDown));
                }
                _ = stepped => {}
                _ = tokio::time::sleep(sleep_for) => {
                    let mut state = lock(&self.inner.state);
                    let now = self.millis();
                    state.engine.tick(now);
                    self.drain(&mut state);
                }
            }
        }
    }

    /// Carries out the engine's effects: starts I/O, cancels, and answers callers.
    fn drain(&self, state: &mut EngineState) {
        self.inner.stepped.notify_waiters();
        while let Some(effect) = state.engine.poll_effect() {
            match effect {
                Effect::Io(command) => {
                    let (cancel, cancelled) = oneshot::channel();
                    state.cancels.insert(command.id, cancel);
                    let fs = self.clone();
                    tokio::spawn(async move {
                        let completion = fs.run_io(command, cancelled).await;
                        let mut state = lock(&fs.inner.state);
                        state.cancels.remove(&completion.id);
                        let now = fs.millis();
                        state.engine.complete(now, completion);
                        fs.drain(&mut state);
                    });
                }
                Effect::Cancel(id) => {
                    if let Some(cancel) = state.cancels.remove(&id) {
                        let _ = cancel.send(());
                    }
                }
                Effect::Reply { request, result } => {
                    if let Some(waiter) = state.waiters.remove(&request) {
                        let _ = waiter.send(result);
                    }
                }
            }
        }
    }

    fn jittered_delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let exponential = RETRY_BASE_DELAY.saturating_mul(1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX));
        let base = retry_after.unwrap_or(exponential).min(RETRY_MAX_DELAY);
        let jitter_ms = u64::try_from(base.as_millis()).unwrap_or(0).checked_div(2).unwrap_or(0);
        let extra = if jitter_ms > 0 {
            lock(&self.inner.rng).gen_range(0..=jitter_ms)
        } else {
            0
        };
        base.saturating_add(Duration::from_millis(extra))
    }

    /// Runs one storage operation with a per-attempt timeout and retries of
    /// transient failures.
    async fn with_retries<T, F, Fut>(&self, mut operation: F) -> Result<T, StorageError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StorageError>>,
    {
        let mut attempt = 1u32;
        loop {
            let result = match tokio::time::timeout(self.inner.options.request_timeout, operation()).await {
                Ok(result) => result,
                Err(_) => Err(StorageError::Timeout),
            };
            match self.retry_delay(attempt, result) {
                Ok(result) => return result,
                Err(delay) => {
                    tokio::time::sleep(delay).await;
                    attempt = attempt.saturating_add(1);
                }
            }
        }
    }

    /// Decides what to do with the outcome of an attempt: give it back, or
    /// wait the returned delay and try again.
    fn retry_delay<T>(
        &self,
        attempt: u32,
        result: Result<T, StorageError>,
    ) -> Result<Result<T, StorageError>, Duration> {
        let attempts = self.inner.options.max_attempts.max(1);
        match result {
            Err(error) if error.is_transient() && attempt < attempts => {
                let retry_after = match &error {
                    StorageError::Throttled { retry_after, .. } => *retry_after,
                    _ => None,
                };
                tracing::debug!(attempt, %error, "retrying storage request");
                Err(self.jittered_delay(attempt, retry_after))
            }
            other => Ok(other),
        }
    }

    /// A ranged read into `target`, with the same timeouts and retries as
    /// [`BlobFs::with_retries`].
    async fn read_with_retries(
        &self,
        path: &str,
        offset: u64,
        target: &mut [u8],
        condition: &Condition,
    ) -> Result<usize, StorageError> {
        let mut attempt = 1u32;
        loop {
            let read = self.inner.store.read_range(path, offset, target, condition);
            let result = match tokio::time::timeout(self.inner.options.request_timeout, read).await {
                Ok(result) => result,
                Err(_) => Err(StorageError::Timeout),
            };
            match self.retry_delay(attempt, result) {
                Ok(result) => return result,
                Err(delay) => {
                    tokio::time::sleep(delay).await;
                    attempt = attempt.saturating_add(1);
                }
            }
        }
    }

    async fn run_io(&self, command: IoCommand, mut cancelled: oneshot::Receiver<()>) -> IoCompletion {
        let IoCommand { id, path, kind } = command;
        let cancelled_error = || IoError {
            kind: IoErrorKind::Cancelled,
            message: "cancelled".into(),
        };
        let store = &self.inner.store;
        match kind {
            IoKind::Load { with_blocks } => {
                let load = async {
                    let properties = match self.with_retries(|| store.get_properties(&path)).await {
                        Ok(properties) => properties,
                        Err(StorageError::NotFound(_)) => return Ok(IoDone::Loaded(None)),
                        Err(error) => return Err(io_error(&error)),
                    };
                    if properties.is_dir_marker {
                        return Ok(IoDone::Loaded(None));
                    }
                    let blocks = if with_blocks {
                        let list = self
                            .with_retries(|| store.get_block_list(&path))
                            .await
                            .map_err(|e| io_error(&e))?;
                        Some(list.into_iter().map(|b| (engine::BlockId(b.id.0), b.size)).collect())
                    } else {
                        None
                    };
                    Ok(IoDone::Loaded(Some(RemoteVersion {
                        etag: properties.etag.0,
                        size: properties.size,
                        mtime_ns: to_ns(properties.last_modified),
                        blocks,
                    })))
                };
                let result = tokio::select! {
                    biased;
                    _ = &mut cancelled => Err(cancelled_error()),
                    result = load => result,
                };
                IoCompletion {
                    id,
                    buffer: None,
                    result,
                }
            }
            IoKind::Fetch {
                offset,
                len,
                etag,
                mut buffer,
            } => {
                let condition = Condition::IfMatch(ETag(etag));
                let result = match buffer.get_mut(..len) {
                    None => Err(IoError {
                        kind: IoErrorKind::Failed,
                        message: format!("fetch of {len} bytes"),
                    }),
                    Some(target) => {
                        let fetch = self.read_with_retries(&path, offset, target, &condition);
                        tokio::select! {
                            biased;
                            _ = &mut cancelled => Err(cancelled_error()),
                            result = fetch => result.map(|bytes| IoDone::Fetched { bytes }).map_err(|e| io_error(&e)),
                        }
                    }
                };
                IoCompletion {
                    id,
                    buffer: Some(buffer),
                    result,
                }
            }
            IoKind::Stage {
                block_id,
                len,
                mut buffer,
            } => {
                buffer.truncate(len);
                let data = Bytes::from(buffer);
                let block = BlockId(block_id.0);
                let result = {
                    let stage = self.with_retries(|| store.put_block(&path, &block, data.clone()));
                    tokio::select! {
                        biased;
                        _ = &mut cancelled => Err(cancelled_error()),
                        result = stage => result.map(|()| IoDone::Staged).map_err(|e| io_error(&e)),
                    }
                };
                // Take the buffer back when storage no longer holds it.
                let buffer = data.try_into_mut().ok().map(|bytes| {
                    let mut buffer = Vec::from(bytes);
                    let block_size = usize::try_from(self.inner.options.block_size).unwrap_or(0);
                    buffer.resize(block_size, 0);
                    buffer
                });
                IoCompletion { id, buffer, result }
            }
            IoKind::Commit { block_ids, condition } => {
                let ids: Vec<BlockId> = block_ids.into_iter().map(|b| BlockId(b.0)).collect();
                let condition = match condition {
                    CommitCondition::IfMatch(etag) => Condition::IfMatch(ETag(etag)),
                    CommitCondition::IfNotExists => Condition::IfNotExists,
                };
                let commit = self.with_retries(|| store.put_block_list(&path, &ids, &condition));
                // A commit is not cancelled half-way: its outcome must be known.
                let result = commit
                    .await
                    .map(|etag| IoDone::Committed { etag: etag.0 })
                    .map_err(|e| io_error(&e));
                self.forget_attr(&path);
                IoCompletion {
                    id,
                    buffer: None,
                    result,
                }
            }
        }
    }

    // ----- attributes -----

    fn cached_attr(&self, path: &str) -> Option<FileAttr> {
        let attrs = lock(&self.inner.attrs);
        let (attr, at) = attrs.get(path)?;
        (at.elapsed() < self.inner.options.attribute_timeout).then_some(*attr)
    }

    fn remember_attr(&self, path: &str, attr: FileAttr) {
        lock(&self.inner.attrs).insert(path.to_string(), (attr, tokio::time::Instant::now()));
    }

    fn forget_attr(&self, path: &str) {
        lock(&self.inner.attrs).remove(path);
    }

    fn forget_attrs_under(&self, prefix: &str) {
        lock(&self.inner.attrs).retain(|path, _| !path.starts_with(prefix));
    }

    /// The size of a file held by the cache, as reads and writes see it;
    /// `None` when the cache holds no such file. Answered without storage.
    pub fn open_file_size(&self, path: &str) -> Option<u64> {
        lock(&self.inner.state).engine.attr(path).map(|attr| attr.size)
    }

    fn live_attr(&self, path: &str) -> Option<FileAttr> {
        lock(&self.inner.state).engine.attr(path).map(|attr| FileAttr {
            kind: FileKind::File,
            size: attr.size,
            mtime: from_ns(attr.mtime_ns),
        })
    }

    /// Directories have no times of their own in blob storage: they show
    /// the time of the mount.
    fn directory_attr(&self) -> FileAttr {
        FileAttr {
            kind: FileKind::Directory,
            size: 0,
            mtime: self.inner.mounted_at,
        }
    }

    // ----- the filesystem API -----

    pub async fn getattr(&self, path: &str) -> FsResult<FileAttr> {
        if path.is_empty() {
            return Ok(self.directory_attr());
        }
        check_path(path)?;
        if let Some(attr) = self.live_attr(path) {
            return Ok(attr);
        }
        if let Some(attr) = self.cached_attr(path) {
            return Ok(attr);
        }
        let store = &self.inner.store;
        let attr = match self.with_retries(|| store.get_properties(path)).await {
            Ok(properties) if properties.is_dir_marker => self.directory_attr(),
            Ok(properties) => FileAttr {
                kind: FileKind::File,
                size: properties.size,
                mtime: properties.last_modified,
            },
            Err(StorageError::NotFound(_)) => {
                let prefix = dir_prefix(path);
                let listing = self
                    .with_retries(|| store.list(&prefix))
                    .await
                    .map_err(|e| storage_error(path, e))?;
                if listing.blobs.is_empty() && listing.prefixes.is_empty() {
                    return Err(FsError::NotFound(path.to_string()));
                }
                self.directory_attr()
            }
            Err(error) => return Err(storage_error(path, error)),
        };
        self.remember_attr(path, attr);
        Ok(attr)
    }

    pub async fn readdir(&self, path: &str) -> FsResult<Vec<DirEntry>> {
        let attr = self.getattr(path).await?;
        if attr.kind != FileKind::Directory {
            return Err(FsError::NotDirectory(path.to_string()));
        }
        let prefix = dir_prefix(path);
        let store = &self.inner.store;
        let listing = self
            .with_retries(|| store.list(&prefix))
            .await
            .map_err(|e| storage_error(path, e))?;
        let mut entries: BTreeMap<String, FileAttr> = BTreeMap::new();
        for sub in listing.prefixes {
            let name = sub
                .strip_prefix(&prefix)
                .unwrap_or(&sub)
                .trim_end_matches('/')
                .to_string();
            if !name.is_empty() {
                entries.insert(name, self.directory_attr());
            }
        }
        for blob in listing.blobs {
            let name = blob.name.strip_prefix(&prefix).unwrap_or(&blob.name).to_string();
            if name.is_empty() {
                continue;
            }
            let attr = if blob.properties.is_dir_marker {
                self.directory_attr()
            } else {
                FileAttr {
                    kind: FileKind::File,
                    size: blob.properties.size,
                    mtime: blob.properties.last_modified,
                }
            };
            self.remember_attr(&blob.name, attr);
            entries.entry(name).or_insert(attr);
        }
        // Files being written are listed with their current size, and new
        // files appear before their first commit.
        let live = lock(&self.inner.state).engine.live_files();
        for (live_path, attr) in live {
            if let Some(name) = live_path.strip_prefix(&prefix) {
                if !name.is_empty() && !name.contains('/') {
                    let attr = FileAttr {
                        kind: FileKind::File,
                        size: attr.size,
                        mtime: from_ns(attr.mtime_ns),
                    };
                    entries.insert(name.to_string(), attr);
                }
            }
        }
        Ok(entries
            .into_iter()
            .map(|(name, attr)| DirEntry { name, attr })
            .collect())
    }

    async fn open_mode(&self, path: &str, mode: OpenMode) -> FsResult<(FileHandle, u64)> {
        check_path(path)?;
        if path.is_empty() {
            return Err(FsError::IsDirectory(path.to_string()));
        }
        let reply = self
            .call(Request::Open {
                path: path.to_string(),
                mode,
                mtime_ns: now_ns(),
            })
            .await;
        match reply.map_err(fs_error)? {
            Reply::Opened { handle, size } => Ok((FileHandle(handle.0), size)),
            other => Err(FsError::Io(format!("unexpected reply to open: {other:?}"))),
        }
    }

    pub async fn open(&self, path: &str, options: OpenOptions) -> FsResult<FileHandle> {
        if self.live_attr(path).is_none() {
            if let Ok(attr) = self.getattr(path).await {
                if attr.kind == FileKind::Directory {
                    return Err(FsError::IsDirectory(path.to_string()));
                }
            }
        }
        let mode = OpenMode {
            write: options.write,
            truncate: options.truncate,
            create: false,
            exclusive: false,
        };
        let (handle, _) = self.open_mode(path, mode).await?;
        if options.truncate {
            self.forget_attr(path);
        }
        Ok(handle)
    }

    pub async fn create(&self, path: &str, exclusive: bool) -> FsResult<(FileHandle, FileAttr)> {
        if let Ok(attr) = self.getattr(path).await {
            if attr.kind == FileKind::Directory {
                return Err(FsError::IsDirectory(path.to_string()));
            }
        }
        let mode = OpenMode {
            write: true,
            truncate: false,
            create: true,
            exclusive,
        };
        let (handle, size) = self.open_mode(path, mode).await?;
        self.forget_attr(path);
        let attr = self.live_attr(path).unwrap_or(FileAttr {
            kind: FileKind::File,
            size,
            mtime: SystemTime::now(),
        });
        Ok((handle, attr))
    }

    pub async fn read(&self, handle: FileHandle, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        match self
            .call(Request::Read {
                handle: HandleId(handle.0),
                offset,
                len: size,
            })
            .await
            .map_err(fs_error)?
        {
            Reply::Data(data) => Ok(data),
            other => Err(FsError::Io(format!("unexpected reply to read: {other:?}"))),
        }
    }

    pub async fn write(&self, handle: FileHandle, offset: u64, data: Vec<u8>) -> FsResult<u32> {
        let request = Request::Write {
            handle: HandleId(handle.0),
            offset,
            data,
            mtime_ns: now_ns(),
        };
        match self.call(request).await.map_err(fs_error)? {
            Reply::Written(count) => Ok(count),
            other => Err(FsError::Io(format!("unexpected reply to write: {other:?}"))),
        }
    }

    pub async fn flush(&self, handle: FileHandle) -> FsResult<()> {
        self.call(Request::Flush {
            handle: HandleId(handle.0),
        })
        .await
        .map_err(fs_error)?;
        Ok(())
    }

    pub async fn fsync(&self, handle: FileHandle) -> FsResult<()> {
        self.flush(handle).await
    }

    pub async fn release(&self, handle: FileHandle) -> FsResult<()> {
        self.call(Request::Release {
            handle: HandleId(handle.0),
        })
        .await
        .map_err(fs_error)?;
        Ok(())
    }

    pub async fn truncate(&self, path: &str, handle: Option<FileHandle>, size: u64) -> FsResult<FileAttr> {
        self.forget_attr(path);
        match handle {
            Some(handle) => {
                let request = Request::Truncate {
                    handle: HandleId(handle.0),
                    size,
                    mtime_ns: now_ns(),
                };
                self.call(request).await.map_err(fs_error)?;
            }
            None => {
                let mode = OpenMode {
                    write: true,
                    truncate: false,
                    create: false,
                    exclusive: false,
                };
                let (handle, _) = self.open_mode(path, mode).await?;
                let handle = HandleId(handle.0);
                let truncated = self
                    .call(Request::Truncate {
                        handle,
                        size,
                        mtime_ns: now_ns(),
                    })
                    .await;
                let flushed = match truncated {
                    Ok(_) => self.call(Request::Flush { handle }).await,
                    Err(error) => Err(error),
                };
                let released = self.call(Request::Release { handle }).await;
                flushed.map_err(fs_error)?;
                released.map_err(fs_error)?;
            }
        }
        self.getattr(path).await
    }

    pub async fn mkdir(&self, path: &str) -> FsResult<FileAttr> {
        check_path(path)?;
        if self.getattr(path).await.is_ok() {
            return Err(FsError::Exists(path.to_string()));
        }
        let store = &self.inner.store;
        self.with_retries(|| store.put_blob(path, Bytes::new(), true, &Condition::IfNotExists))
            .await
            .map_err(|e| storage_error(path, e))?;
        let attr = self.directory_attr();
        self.remember_attr(path, attr);
        Ok(attr)
    }

    pub async fn rmdir(&self, path: &str) -> FsResult<()> {
        check_path(path)?;
        let attr = self.getattr(path).await?;
        if attr.kind != FileKind::Directory {
            return Err(FsError::NotDirectory(path.to_string()));
        }
        if !self.readdir(path).await?.is_empty() {
            return Err(FsError::NotEmpty(path.to_string()));
        }
        let store = &self.inner.store;
        match self.with_retries(|| store.delete_blob(path)).await {
            Ok(()) | Err(StorageError::NotFound(_)) => {}
            Err(error) => return Err(storage_error(path, error)),
        }
        self.forget_attr(path);
        Ok(())
    }

    pub async fn unlink(&self, path: &str) -> FsResult<()> {
        check_path(path)?;
        let attr = self.getattr(path).await?;
        if attr.kind == FileKind::Directory {
            return Err(FsError::IsDirectory(path.to_string()));
        }
        let was_live = self.live_attr(path).is_some();
        let committing = {
            let mut state = lock(&self.inner.state);
            let file = state.engine.file_at(path);
            state.engine.unlink(path);
            self.drain(&mut state);
            file.filter(|file| state.engine.commit_in_flight(*file))
        };
        if let Some(file) = committing {
            // A commit that lands after the delete would bring the blob back.
            self.wait_for_commit(file).await;
        }
        self.forget_attr(path);
        let store = &self.inner.store;
        match self.with_retries(|| store.delete_blob(path)).await {
            Ok(()) => Ok(()),
            // A new file that was never committed has nothing in storage.
            Err(StorageError::NotFound(_)) if was_live => Ok(()),
            Err(error) => Err(storage_error(path, error)),
        }
    }

    /// Waits until no commit of the file is in flight. Commits are bounded
    /// by the request timeout and the attempts, so this ends.
    async fn wait_for_commit(&self, file: engine::FileId) {
        loop {
            let stepped = self.inner.stepped.notified();
            if !lock(&self.inner.state).engine.commit_in_flight(file) {
                return;
            }
            stepped.await;
        }
    }

    /// Commits what is written to an open file, through a handle of its own.
    async fn flush_path(&self, path: &str) -> FsResult<()> {
        let mode = OpenMode {
            write: false,
            truncate: false,
            create: false,
            exclusive: false,
        };
        let (handle, _) = self.open_mode(path, mode).await?;
        let handle = HandleId(handle.0);
        let flushed = self.call(Request::Flush { handle }).await;
        let released = self.call(Request::Release { handle }).await;
        flushed.map_err(fs_error)?;
        released.map_err(fs_error)?;
        Ok(())
    }

    async fn rename_file(&self, from: &str, to: &str) -> FsResult<()> {
        let live = self.live_attr(from).is_some();
        if live {
            self.flush_path(from).await?;
        }
        // The file now under `to` loses its name. A commit of it already
        // sent lands before the copy, which then replaces it; one landing
        // after a later unlink of `to` would bring the blob back.
        let replaced = lock(&self.inner.state).engine.file_at(to);
        if let Some(file) = replaced {
            self.wait_for_commit(file).await;
        }
        let store = &self.inner.store;
        self.with_retries(|| store.copy_blob(from, to))
            .await
            .map_err(|e| storage_error(from, e))?;
        match self.with_retries(|| store.delete_blob(from)).await {
            Ok(()) | Err(StorageError::NotFound(_)) => {}
            Err(error) => return Err(storage_error(from, error)),
        }
        let version = if live {
            let properties = self
                .with_retries(|| store.get_properties(to))
                .await
                .map_err(|e| storage_error(to, e))?;
            let blocks = self
                .with_retries(|| store.get_block_list(to))
                .await
                .map_err(|e| storage_error(to, e))?;
            Some(RemoteVersion {
                etag: properties.etag.0,
                size: properties.size,
                mtime_ns: to_ns(properties.last_modified),
                blocks: Some(blocks.into_iter().map(|b| (engine::BlockId(b.id.0), b.size)).collect()),
            })
        } else {
            None
        };
        {
            let mut state = lock(&self.inner.state);
            state.engine.renamed(from, to, version);
            self.drain(&mut state);
        }
        if let Some(file) = replaced {
            // One sent while the copy ran.
            self.wait_for_commit(file).await;
        }
        Ok(())
    }

    /// Every name under a directory that may be a blob: files, markers, and
    /// sub-prefixes (which some backends list only as prefixes).
    async fn collect_tree(&self, path: &str) -> FsResult<Vec<String>> {
        let store = &self.inner.store;
        let mut names = Vec::new();
        let mut pending = vec![dir_prefix(path)];
        while let Some(prefix) = pending.pop() {
            let listing = self
                .with_retries(|| store.list(&prefix))
                .await
                .map_err(|e| storage_error(path, e))?;
            for blob in listing.blobs {
                if blob.properties.is_dir_marker {
                    pending.push(format!("{}/", blob.name));
                }
                names.push(blob.name);
            }
            for sub in listing.prefixes {
                // A directory may be a marker blob that some backends list
                // only as a prefix; the caller checks which names exist.
                names.push(sub.trim_end_matches('/').to_string());
                if !pending.contains(&sub) {
                    pending.push(sub);
                }
            }
        }
        names.sort();
        names.dedup();
        Ok(names)
    }

    pub async fn rename(&self, from: &str, to: &str) -> FsResult<()> {
        check_path(from)?;
        check_path(to)?;
        if from == to {
            return Ok(());
        }
        let source = self.getattr(from).await?;
        if let Ok(target) = self.getattr(to).await {
            match (source.kind, target.kind) {
                (FileKind::File, FileKind::Directory) => return Err(FsError::IsDirectory(to.to_string())),
                (FileKind::Directory, FileKind::File) => return Err(FsError::NotDirectory(to.to_string())),
                (FileKind::Directory, FileKind::Directory) => {
                    if !self.readdir(to).await?.is_empty() {
                        return Err(FsError::NotEmpty(to.to_string()));
                    }
                    self.rmdir(to).await?;
                }
                (FileKind::File, FileKind::File) => {}
            }
        }
        self.forget_attr(from);
        self.forget_attr(to);
        if source.kind == FileKind::File {
            return self.rename_file(from, to).await;
        }
        if to.starts_with(&dir_prefix(from)) {
            return Err(FsError::InvalidName(format!("cannot move {from} into itself")));
        }
        let names = self.collect_tree(from).await?;
        let from_prefix = dir_prefix(from);
        let to_prefix = dir_prefix(to);
        let store = &self.inner.store;
        // Target markers first so the directories exist early; source
        // markers last, deepest first, once what they held has moved.
        let mut old_markers = Vec::new();
        if let Ok(properties) = self.with_retries(|| store.get_properties(from)).await {
            if properties.is_dir_marker {
                self.put_marker(to).await?;
                old_markers.push(from.to_string());
            }
        }
        for name in names {
            let Some(rest) = name.strip_prefix(&from_prefix) else {
                continue;
            };
            let target = format!("{to_prefix}{rest}");
            match self.with_retries(|| store.get_properties(&name)).await {
                Ok(properties) if properties.is_dir_marker => {
                    self.put_marker(&target).await?;
                    old_markers.push(name);
                }
                Ok(_) => self.rename_file(&name, &target).await?,
                // A directory that exists only as a prefix of other names.
                Err(StorageError::NotFound(_)) => {}
                Err(error) => return Err(storage_error(&name, error)),
            }
        }
        old_markers.sort_by_key(|name| std::cmp::Reverse(name.len()));
        for name in old_markers {
            match self.with_retries(|| store.delete_blob(&name)).await {
                Ok(()) | Err(StorageError::NotFound(_)) => {}
                Err(error) => return Err(storage_error(&name, error)),
            }
        }
        self.forget_attrs_under(&from_prefix);
        self.forget_attrs_under(&to_prefix);
        Ok(())
    }

    async fn put_marker(&self, path: &str) -> FsResult<()> {
        let store = &self.inner.store;
        self.with_retries(|| store.put_blob(path, Bytes::new(), true, &Condition::None))
            .await
            .map(|_| ())
            .map_err(|e| storage_error(path, e))
    }

    pub fn statfs(&self) -> FsStats {
        let block_size = u32::try_from(self.inner.options.block_size.min(1 << 20)).unwrap_or(4096);
        FsStats {
            block_size,
            total_blocks: 1 << 40,
            free_blocks: 1 << 40,
            max_name_len: 1024,
        }
    }

    /// Commits every dirty file, cancels prefetch, and waits until no I/O
    /// is left. New opens and writes fail from then on.
    pub async fn shutdown(&self) -> FsResult<()> {
        self.call(Request::Shutdown).await.map_err(fs_error)?;
        Ok(())
    }

    /// The parent directory prefix of a path (used by the FUSE adapter).
    pub fn parent_of(path: &str) -> String {
        parent_prefix(path).trim_end_matches('/').to_string()
    }
}
