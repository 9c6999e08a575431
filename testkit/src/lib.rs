//! A synchronous driver for engine tests: an in-memory blob store with
//! block-blob semantics, and a harness that carries out the engine's
//! effects, checks its invariants after every step, and lets tests choose
//! when I/O completes or fails.

use blobcache_engine::*;
use std::collections::{BTreeMap, VecDeque};

#[derive(Clone, Debug, Default)]
pub struct StoredBlob {
    pub etag: String,
    pub data: Vec<u8>,
    pub blocks: Vec<(BlockId, u64)>,
}

#[derive(Default)]
pub struct Store {
    pub blobs: BTreeMap<String, StoredBlob>,
    pub staged: BTreeMap<(String, BlockId), Vec<u8>>,
    next_etag: u64,
}

impl Store {
    fn etag(&mut self) -> String {
        self.next_etag += 1;
        format!("\"v{}\"", self.next_etag)
    }

    /// A blob put in one piece, with no block list.
    pub fn put_blob(&mut self, path: &str, data: Vec<u8>) {
        let etag = self.etag();
        self.blobs.insert(
            path.into(),
            StoredBlob {
                etag,
                data,
                blocks: vec![],
            },
        );
    }

    /// A blob committed from blocks of the given sizes with ids of `id_len` bytes.
    pub fn put_blocks(&mut self, path: &str, data: Vec<u8>, sizes: &[u64], id_len: usize) {
        let mut blocks = vec![];
        for (i, size) in sizes.iter().enumerate() {
            let mut id = vec![0xEE; id_len];
            id[0] = i as u8;
            id[1] = (i >> 8) as u8;
            blocks.push((BlockId(id), *size));
        }
        assert_eq!(sizes.iter().sum::<u64>(), data.len() as u64);
        let etag = self.etag();
        self.blobs.insert(path.into(), StoredBlob { etag, data, blocks });
    }

    pub fn data(&self, path: &str) -> Option<&[u8]> {
        self.blobs.get(path).map(|b| b.data.as_slice())
    }

    /// Carries out one command against the store.
    pub fn execute(&mut self, command: IoCommand) -> IoCompletion {
        let IoCommand { id, path, kind } = command;
        match kind {
            IoKind::Load { with_blocks } => {
                let result = match self.blobs.get(&path) {
                    None => Ok(IoDone::Loaded(None)),
                    Some(blob) => Ok(IoDone::Loaded(Some(RemoteVersion {
                        etag: blob.etag.clone(),
                        size: blob.data.len() as u64,
                        mtime_ns: 7,
                        blocks: with_blocks.then(|| blob.blocks.clone()),
                    }))),
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
                let result = match self.blobs.get(&path) {
                    None => Err(IoError {
                        kind: IoErrorKind::NotFound,
                        message: "gone".into(),
                    }),
                    Some(blob) if blob.etag != etag => Err(IoError {
                        kind: IoErrorKind::PreconditionFailed,
                        message: "changed".into(),
                    }),
                    Some(blob) => {
                        let start = (offset as usize).min(blob.data.len());
                        let end = (offset as usize + len).min(blob.data.len());
                        buffer[..end - start].copy_from_slice(&blob.data[start..end]);
                        Ok(IoDone::Fetched { bytes: end - start })
                    }
                };
                IoCompletion {
                    id,
                    buffer: Some(buffer),
                    result,
                }
            }
            IoKind::Stage { block_id, len, buffer } => {
                assert_eq!(block_id.0.len(), BLOCK_ID_LEN);
                self.staged.insert((path, block_id), buffer[..len].to_vec());
                IoCompletion {
                    id,
                    buffer: Some(buffer),
                    result: Ok(IoDone::Staged),
                }
            }
            IoKind::Commit { block_ids, condition } => {
                let current = self.blobs.get(&path).cloned();
                let ok = match (&condition, &current) {
                    (CommitCondition::IfNotExists, None) => true,
                    (CommitCondition::IfMatch(etag), Some(blob)) => &blob.etag == etag,
                    _ => false,
                };
                if !ok {
                    return IoCompletion {
                        id,
                        buffer: None,
                        result: Err(IoError {
                            kind: IoErrorKind::PreconditionFailed,
                            message: "condition".into(),
                        }),
                    };
                }
                let mut data = vec![];
                let mut blocks = vec![];
                // Where each committed id starts (its first occurrence), so that
                // lists of 50,000 blocks commit in linear time.
                let mut committed: BTreeMap<&BlockId, (usize, usize)> = BTreeMap::new();
                if let Some(blob) = current.as_ref() {
                    let mut offset = 0usize;
                    for (id, size) in &blob.blocks {
                        committed.entry(id).or_insert((offset, *size as usize));
                        offset += *size as usize;
                    }
                }
                for block_id in &block_ids {
                    let bytes = if let Some(bytes) = self.staged.get(&(path.clone(), block_id.clone())) {
                        bytes.clone()
                    } else {
                        let blob = current.as_ref().expect("committed id of a missing blob");
                        let (offset, size) = committed
                            .get(block_id)
                            .unwrap_or_else(|| panic!("commit names unknown block {block_id:?}"));
                        blob.data[*offset..offset + size].to_vec()
                    };
                    blocks.push((block_id.clone(), bytes.len() as u64));
                    data.extend_from_slice(&bytes);
                }
                self.staged.retain(|(p, _), _| p != &path);
                let etag = self.etag();
                self.blobs.insert(
                    path,
                    StoredBlob {
                        etag: etag.clone(),
                        data,
                        blocks,
                    },
                );
                IoCompletion {
                    id,
                    buffer: None,
                    result: Ok(IoDone::Committed { etag }),
                }
            }
        }
    }
}

pub struct Harness {
    pub engine: Engine,
    pub store: Store,
    pub now: u64,
    /// Issued commands not yet completed, in issue order.
    pub pending: VecDeque<IoCommand>,
    pub replies: BTreeMap<u64, Result<Reply, EngineError>>,
    next_request: u64,
}

impl Harness {
    pub fn new(block_size: u64, pool_buffers: usize) -> Harness {
        let mut config = EngineConfig::new(block_size, pool_buffers);
        config.parallelism = 4;
        config.prefetch_blocks = 2;
        Harness::with_config(config)
    }

    pub fn with_config(config: EngineConfig) -> Harness {
        Harness {
            engine: Engine::new(config).expect("valid config"),
            store: Store::default(),
            now: 0,
            pending: VecDeque::new(),
            replies: BTreeMap::new(),
            next_request: 1,
        }
    }

    fn drain(&mut self) {
        self.engine.check_invariants().expect("invariants");
        while let Some(effect) = self.engine.poll_effect() {
            match effect {
                Effect::Io(command) => self.pending.push_back(command),
                Effect::Cancel(_) => {}
                Effect::Reply { request, result } => {
                    assert!(
                        self.replies.insert(request.0, result).is_none(),
                        "two replies to {request}"
                    );
                }
            }
        }
    }

    /// Submits a request without running I/O; returns its id.
    pub fn submit(&mut self, request: Request) -> u64 {
        let id = self.next_request;
        self.next_request += 1;
        self.engine.handle(Millis(self.now), RequestId(id), request);
        self.drain();
        id
    }

    /// Completes the oldest pending command against the store.
    pub fn complete_one(&mut self) -> bool {
        let Some(command) = self.pending.pop_front() else {
            return false;
        };
        let completion = self.store.execute(command);
        self.engine.complete(Millis(self.now), completion);
        self.drain();
        true
    }

    /// Completes the pending command at `position` (modulo the queue length).
    pub fn complete_at(&mut self, position: usize) -> bool {
        if self.pending.is_empty() {
            return false;
        }
        let Some(command) = self.pending.remove(position % self.pending.len()) else {
            return false;
        };
        let completion = self.store.execute(command);
        self.engine.complete(Millis(self.now), completion);
        self.drain();
        true
    }

    /// Fails the oldest pending command with `kind`, giving its buffer back.
    pub fn fail_one(&mut self, kind: IoErrorKind) -> bool {
        let Some(command) = self.pending.pop_front() else {
            return false;
        };
        let buffer = match command.kind {
            IoKind::Fetch { buffer, .. } | IoKind::Stage { buffer, .. } => Some(buffer),
            _ => None,
        };
        let completion = IoCompletion {
            id: command.id,
            buffer,
            result: Err(IoError {
                kind,
                message: "injected".into(),
            }),
        };
        self.engine.complete(Millis(self.now), completion);
        self.drain();
        true
    }

    /// Fails the pending command at `position` (modulo the queue length) with
    /// `kind`, giving its buffer back; returns the command's path.
    pub fn fail_at(&mut self, position: usize, kind: IoErrorKind) -> Option<String> {
        if self.pending.is_empty() {
            return None;
        }
        let command = self.pending.remove(position % self.pending.len())?;
        let path = command.path.clone();
        let buffer = match command.kind {
            IoKind::Fetch { buffer, .. } | IoKind::Stage { buffer, .. } => Some(buffer),
            _ => None,
        };
        let completion = IoCompletion {
            id: command.id,
            buffer,
            result: Err(IoError {
                kind,
                message: "injected".into(),
            }),
        };
        self.engine.complete(Millis(self.now), completion);
        self.drain();
        Some(path)
    }

    /// Completes the pending command at `position` (modulo the queue length)
    /// against the store, but if it is a fetch reports at most `max_bytes`
    /// read, as a driver that loses the end of a response would. Returns the
    /// command's path and whether the completion was cut short.
    pub fn complete_short_at(&mut self, position: usize, max_bytes: usize) -> Option<(String, bool)> {
        if self.pending.is_empty() {
            return None;
        }
        let command = self.pending.remove(position % self.pending.len())?;
        let path = command.path.clone();
        let mut completion = self.store.execute(command);
        let mut cut = false;
        if let Ok(IoDone::Fetched { bytes }) = &mut completion.result {
            if *bytes > max_bytes {
                *bytes = max_bytes;
                cut = true;
            }
        }
        self.engine.complete(Millis(self.now), completion);
        self.drain();
        Some((path, cut))
    }

    pub fn run_io(&mut self) {
        let mut steps = 0;
        while self.complete_one() {
            steps += 1;
            assert!(steps < 1_000_000, "I/O never settles");
        }
    }

    pub fn advance(&mut self, millis: u64) {
        self.now += millis;
        self.engine.tick(Millis(self.now));
        self.drain();
    }

    /// Submits a request and runs I/O until it is answered.
    pub fn call(&mut self, request: Request) -> Result<Reply, EngineError> {
        let id = self.submit(request);
        loop {
            if let Some(result) = self.replies.remove(&id) {
                return result;
            }
            assert!(self.complete_one(), "request {id} waits with no I/O pending");
        }
    }

    pub fn open(&mut self, path: &str, write: bool, create: bool) -> HandleId {
        let mode = OpenMode {
            write,
            truncate: false,
            create,
            exclusive: false,
        };
        match self.call(Request::Open {
            path: path.into(),
            mode,
            mtime_ns: 1,
        }) {
            Ok(Reply::Opened { handle, .. }) => handle,
            other => panic!("open {path}: {other:?}"),
        }
    }

    pub fn read(&mut self, handle: HandleId, offset: u64, len: u32) -> Vec<u8> {
        match self.call(Request::Read { handle, offset, len }) {
            Ok(Reply::Data(data)) => data,
            other => panic!("read: {other:?}"),
        }
    }

    pub fn write(&mut self, handle: HandleId, offset: u64, data: &[u8]) {
        match self.call(Request::Write {
            handle,
            offset,
            data: data.to_vec(),
            mtime_ns: 2,
        }) {
            Ok(Reply::Written(n)) => assert_eq!(n as usize, data.len()),
            other => panic!("write: {other:?}"),
        }
    }

    pub fn flush(&mut self, handle: HandleId) -> Result<Reply, EngineError> {
        self.call(Request::Flush { handle })
    }

    pub fn truncate(&mut self, handle: HandleId, size: u64) -> Result<Reply, EngineError> {
        self.call(Request::Truncate {
            handle,
            size,
            mtime_ns: 3,
        })
    }

    pub fn release(&mut self, handle: HandleId) {
        assert_eq!(self.call(Request::Release { handle }), Ok(Reply::Done));
    }

    /// Reads a whole file through a fresh handle.
    pub fn read_all(&mut self, path: &str) -> Vec<u8> {
        let handle = self.open(path, false, false);
        let mut out = vec![];
        loop {
            let chunk = self.read(handle, out.len() as u64, 1000);
            if chunk.is_empty() {
                break;
            }
            out.extend_from_slice(&chunk);
        }
        self.release(handle);
        out
    }

    /// Checks that every committed blob has the uniform layout.
    pub fn assert_layout(&self, path: &str, block_size: u64) {
        let blob = &self.store.blobs[path];
        let n = blob.blocks.len();
        for (i, (id, size)) in blob.blocks.iter().enumerate() {
            assert_eq!(id.0.len(), BLOCK_ID_LEN);
            if i + 1 < n {
                assert_eq!(*size, block_size, "block {i} of {path}");
            } else {
                assert!(*size <= block_size && *size > 0);
            }
        }
        assert_eq!(blob.data.len() as u64, blob.blocks.iter().map(|b| b.1).sum::<u64>());
    }
}

/// Deterministic test content.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u8)
                .wrapping_mul(31)
                .wrapping_add(seed)
                .wrapping_add((i >> 8) as u8)
        })
        .collect()
}
