//! The vocabulary of the engine: typed ids, configuration, requests and
//! replies, and the I/O commands it asks its driver to perform.

use std::fmt;

/// Monotonic time in milliseconds, as given by the driver. The engine never
/// reads a clock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Millis(pub u64);

impl Millis {
    pub fn saturating_add(self, millis: u64) -> Millis {
        Millis(self.0.saturating_add(millis))
    }
}

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub u64);
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

typed_id!(
    /// An open or cached file inside the engine.
    FileId
);
typed_id!(
    /// An open handle on a file.
    HandleId
);
typed_id!(
    /// A request from the filesystem, chosen by the driver; its reply names it.
    RequestId
);
typed_id!(
    /// An I/O command issued by the engine; its completion names it.
    IoId
);

/// Raw bytes of a block id as stored in a block list.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlockId(pub Vec<u8>);

/// Length in bytes of the block ids the engine generates: 8 bytes of
/// per-mount nonce then an 8-byte counter, so that two mounts writing the
/// same blob never stage different data under one id.
pub const BLOCK_ID_LEN: usize = 16;

/// Most blocks a committed blob may have.
pub const MAX_BLOCKS_PER_BLOB: u64 = 50_000;

/// Largest block the service accepts (4000 MiB).
pub const MAX_BLOCK_SIZE: u64 = 4000 * 1024 * 1024;

/// Validated settings of one engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    /// Bytes per block; every block of a committed blob but the last has this size.
    pub block_size: u64,
    /// Number of block buffers: the memory budget divided by the block size.
    pub pool_buffers: usize,
    /// Storage requests in flight at once.
    pub parallelism: usize,
    /// Most blocks read ahead of one sequential reader.
    pub prefetch_blocks: u32,
    /// How long a request may wait for a free buffer before failing.
    pub buffer_wait_timeout_ms: u64,
    /// How long the properties of a closed, cached file are trusted.
    pub attribute_timeout_ms: u64,
    /// Most requests that may wait at once; more fail at once as busy.
    pub max_waiting_requests: usize,
    /// Per-mount nonce placed in every generated block id.
    pub block_id_nonce: u64,
    /// Audit faults put back on purpose (simulation builds only).
    #[cfg(madsim)]
    pub faults: SimFaults,
}

/// Faults from the audit that a simulation build can put back into the
/// engine and the shell, so that the simulation proves it can see them.
/// Each is one check at the place where the fault would be.
#[cfg(madsim)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimFaults {
    /// 1.4: a request that fails with an error keeps its pin.
    pub keep_pin_on_error: bool,
    /// 1.2: an internal inconsistency, or an I/O completion that does not
    /// fit its command, panics instead of failing the request.
    pub panic_on_internal: bool,
    /// 1.3: an open while the last release's commit is running reloads the
    /// file from storage as if nobody used it.
    pub open_ignores_pending_commit: bool,
    /// 2.1: a flush waiting for a commit that failed reports success.
    pub hide_write_errors: bool,
    /// 2.4: shutdown answers while I/O is still in flight.
    pub early_shutdown_reply: bool,
    /// 2.5: writes are not checked against the largest blob size.
    pub skip_size_check: bool,
    /// 2.8: the bytes past the end of a short fetch are not zeroed.
    pub skip_fetch_zeroing: bool,
    /// 2.3 / 6.2: a request waits for a buffer a thousand times longer.
    pub endless_buffer_wait: bool,
    /// 1.1 (shell): every mount uses the same block id nonce.
    pub shared_block_ids: bool,
    /// 1.5 / 7.3 (shell): storage requests have no time limit.
    pub no_request_timeout: bool,
    /// 2.2: the last release of a file leaves its read-ahead running.
    pub keep_prefetch_on_release: bool,
    /// 7.4: I/O is issued in the order it was queued, whatever its priority.
    pub fifo_io_order: bool,
}

impl EngineConfig {
    /// A configuration for `pool_buffers` blocks of `block_size` bytes with
    /// defaults for the rest.
    pub fn new(block_size: u64, pool_buffers: usize) -> EngineConfig {
        EngineConfig {
            block_size,
            pool_buffers,
            parallelism: 16,
            prefetch_blocks: 4,
            buffer_wait_timeout_ms: 30_000,
            attribute_timeout_ms: 2_000,
            max_waiting_requests: 4096,
            block_id_nonce: 0,
            #[cfg(madsim)]
            faults: SimFaults::default(),
        }
    }
}

/// How a file is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenMode {
    pub write: bool,
    /// Empty the file at open (`O_TRUNC`).
    pub truncate: bool,
    /// Create the file if it does not exist.
    pub create: bool,
    /// Fail if the file exists (`O_EXCL`).
    pub exclusive: bool,
}

/// A filesystem request to the engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Open {
        path: String,
        mode: OpenMode,
        mtime_ns: u64,
    },
    Read {
        handle: HandleId,
        offset: u64,
        len: u32,
    },
    Write {
        handle: HandleId,
        offset: u64,
        data: Vec<u8>,
        mtime_ns: u64,
    },
    /// Makes everything written through the file durable (flush and fsync).
    Flush {
        handle: HandleId,
    },
    Truncate {
        handle: HandleId,
        size: u64,
        mtime_ns: u64,
    },
    Release {
        handle: HandleId,
    },
    /// Commits every dirty file, cancels prefetch and waits until no I/O is left.
    Shutdown,
}

/// A successful reply to a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Opened { handle: HandleId, size: u64 },
    Data(Vec<u8>),
    Written(u32),
    Done,
}

/// What one file holds of the engine's resources right now: for tests and
/// the simulation, which check that a closed file lets go of everything.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileActivity {
    pub handles: u32,
    /// Requests waiting that concern it, opens of its path included.
    pub requests: usize,
    /// Pins held on its blocks by waiting requests.
    pub pins: u64,
    /// Read-ahead fetches queued or in flight, including cancelled ones
    /// whose buffer has not come back yet.
    pub prefetches: usize,
    /// Read-ahead fetches issued to storage and not completed.
    pub prefetches_in_flight: usize,
    /// Fetches of any kind queued or in flight, cancelled ones included.
    pub fetches: usize,
    /// A commit of the file is running.
    pub committing: bool,
}

/// Size and modification time of an open or cached file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileAttr {
    pub size: u64,
    pub mtime_ns: u64,
}

/// The condition a commit is made under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommitCondition {
    /// The blob must still be at the version the cache is valid for.
    IfMatch(String),
    /// The blob must not exist yet (a new file).
    IfNotExists,
}

/// What the driver is asked to do.
#[derive(Debug, PartialEq, Eq)]
pub enum IoKind {
    /// Read the blob's properties, and its committed block list if `with_blocks`.
    Load { with_blocks: bool },
    /// Read `len` bytes at `offset` of the version `etag` into `buffer[..len]`.
    Fetch {
        offset: u64,
        len: usize,
        etag: String,
        buffer: Vec<u8>,
    },
    /// Stage `buffer[..len]` as block `block_id`.
    Stage {
        block_id: BlockId,
        len: usize,
        buffer: Vec<u8>,
    },
    /// Commit the blob as the list of blocks.
    Commit {
        block_ids: Vec<BlockId>,
        condition: CommitCondition,
    },
}

/// One I/O command. The driver must complete every command exactly once,
/// returning the buffer it carried (also on error and on cancellation).
#[derive(Debug, PartialEq, Eq)]
pub struct IoCommand {
    pub id: IoId,
    pub path: String,
    pub kind: IoKind,
}

/// A committed version of a blob as loaded from storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteVersion {
    pub etag: String,
    pub size: u64,
    pub mtime_ns: u64,
    /// The committed block list, when asked for: ids and sizes in order.
    pub blocks: Option<Vec<(BlockId, u64)>>,
}

/// What kind of failure an I/O met.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoErrorKind {
    /// The blob definitely does not exist.
    NotFound,
    /// The blob is not at the version the request was conditional on.
    PreconditionFailed,
    /// Storage refused access.
    Forbidden,
    /// The command was cancelled by the engine.
    Cancelled,
    /// The request timed out after its retries.
    TimedOut,
    /// Any other failure, after the driver's retries.
    Failed,
}

/// A failed I/O.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IoError {
    pub kind: IoErrorKind,
    pub message: String,
}

/// What a successful I/O produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IoDone {
    /// `None`: the blob does not exist.
    Loaded(Option<RemoteVersion>),
    /// Bytes actually read (fewer than asked only at the end of the blob).
    Fetched {
        bytes: usize,
    },
    Staged,
    Committed {
        etag: String,
    },
}

/// The completion of an I/O command.
#[derive(Debug, PartialEq, Eq)]
pub struct IoCompletion {
    pub id: IoId,
    /// The buffer the command carried, given back.
    pub buffer: Option<Vec<u8>>,
    pub result: Result<IoDone, IoError>,
}

/// What the engine asks its driver to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Effect {
    Io(IoCommand),
    /// Abandon an issued command; it must still be completed (as cancelled or not).
    Cancel(IoId),
    Reply {
        request: RequestId,
        result: Result<Reply, crate::EngineError>,
    },
}
