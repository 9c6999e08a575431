//! The simulated blob container: the in-memory store's block-blob semantics
//! behind a gate that injects what a real service does: latency drawn per
//! request, bandwidth per stream, transient errors (500, 503 with
//! retry-after, server timeouts), hung requests that only the shell's
//! timeout ends, permanent errors (403, 404, 412), slow commits and commits
//! whose reply is lost after they took effect. It also keeps the history of
//! every committed version of every blob, which the reference model checks
//! reads against, and serves the outside writer, who bypasses the faults.

use crate::params::StoreFaults;
use crate::trace::Trace;
use async_trait::async_trait;
use blobcache::storage::memory::MemoryStore;
use blobcache::storage::{
    BlobProperties, BlobStore, BlockId, CommittedBlock, Condition, ETag, Listing, StorageError, StorageResult,
};
use bytes::Bytes;
use rand::Rng;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// What a request is, for choosing which faults apply.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Properties,
    Read,
    Stage,
    Commit,
    Other,
}

pub struct SimStore {
    inner: MemoryStore,
    faults: StoreFaults,
    faults_on: AtomicBool,
    trace: Trace,
    /// Every content each blob had, in order; `None` while it did not exist.
    history: Mutex<BTreeMap<String, Vec<Option<Vec<u8>>>>>,
    pub hung: AtomicU64,
    /// Commits running per blob.
    commits: Mutex<BTreeMap<String, usize>>,
    pub injected: AtomicU64,
    pub requests: AtomicU64,
}

fn now_ms() -> u64 {
    crate::world::sim_millis()
}

/// Counts a commit as running for as long as it lives.
struct CommitRunning<'a> {
    store: &'a SimStore,
    name: String,
}

impl<'a> CommitRunning<'a> {
    fn new(store: &'a SimStore, name: &str) -> CommitRunning<'a> {
        if let Ok(mut commits) = store.commits.lock() {
            *commits.entry(name.to_string()).or_default() += 1;
        }
        CommitRunning {
            store,
            name: name.to_string(),
        }
    }
}

impl Drop for CommitRunning<'_> {
    fn drop(&mut self) {
        if let Ok(mut commits) = self.store.commits.lock() {
            if let Some(count) = commits.get_mut(&self.name) {
                *count = count.saturating_sub(1);
            }
        }
    }
}

impl SimStore {
    /// Whether a commit of `name` is running right now.
    pub fn committing(&self, name: &str) -> bool {
        self.commits
            .lock()
            .map(|c| c.get(name).copied().unwrap_or(0) > 0)
            .unwrap_or(false)
    }

    pub fn new(faults: StoreFaults, trace: Trace) -> SimStore {
        SimStore {
            inner: MemoryStore::new(),
            faults,
            faults_on: AtomicBool::new(true),
            trace,
            history: Mutex::new(BTreeMap::new()),
            hung: AtomicU64::new(0),
            commits: Mutex::new(BTreeMap::new()),
            injected: AtomicU64::new(0),
            requests: AtomicU64::new(0),
        }
    }

    pub fn faults_on(&self) -> bool {
        self.faults_on.load(Ordering::SeqCst)
    }

    /// Ends the fault phase: from now on every request succeeds after its latency.
    pub fn stop_faults(&self) {
        self.faults_on.store(false, Ordering::SeqCst);
    }

    /// The committed content of a blob right now.
    pub async fn content(&self, name: &str) -> Option<Vec<u8>> {
        let properties = self.inner.get_properties(name).await.ok()?;
        let mut buffer = vec![0; usize::try_from(properties.size).ok()?];
        let read = self
            .inner
            .read_range(name, 0, &mut buffer, &Condition::None)
            .await
            .ok()?;
        buffer.truncate(read);
        Some(buffer)
    }

    /// Every version a blob has had.
    pub fn versions(&self, name: &str) -> Vec<Option<Vec<u8>>> {
        self.history
            .lock()
            .map(|h| h.get(name).cloned().unwrap_or_default())
            .unwrap_or_default()
    }

    async fn record(&self, name: &str) {
        let content = self.content(name).await;
        if let Ok(mut history) = self.history.lock() {
            let versions = history.entry(name.to_string()).or_default();
            if versions.last() != Some(&content) {
                versions.push(content);
            }
        }
    }

    /// The outside writer replaces a blob, ignoring faults.
    pub async fn outside_put(&self, name: &str, data: Vec<u8>) {
        let len = data.len();
        let result = self
            .inner
            .put_blob(name, Bytes::from(data), false, &Condition::None)
            .await;
        self.trace.event(now_ms(), || {
            format!("outside put {name} {len} bytes: {:?}", result.is_ok())
        });
        self.record(name).await;
    }

    /// The outside writer deletes a blob, ignoring faults.
    pub async fn outside_delete(&self, name: &str) {
        let result = self.inner.delete_blob(name).await;
        self.trace
            .event(now_ms(), || format!("outside delete {name}: {:?}", result.is_ok()));
        self.record(name).await;
    }

    fn transfer_time(&self, bytes: usize) -> Duration {
        match self.faults.bytes_per_sec {
            Some(rate) if rate > 0 => {
                let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
                Duration::from_micros(bytes.saturating_mul(1_000_000) / rate)
            }
            _ => Duration::ZERO,
        }
    }

    /// Decides the fate of one request before it takes effect: its latency,
    /// or an injected error, or a hang. The same number of draws happens
    /// whatever the outcome, so one fault does not shift every later draw.
    async fn gate(&self, kind: Kind, name: &str, body: usize) -> StorageResult<Duration> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let f = &self.faults;
        let mut rng = madsim::rand::thread_rng();
        let tail = rng.gen_bool(f.tail_prob.clamp(0.0, 1.0));
        let base = rng.gen_range(f.latency_min_ms..=f.latency_max_ms.max(f.latency_min_ms));
        let roll: f64 = rng.gen();
        let retry_after = Duration::from_millis(rng.gen_range(0..2000));
        let on = self.faults_on.load(Ordering::SeqCst);
        let latency = Duration::from_millis(if tail && on { f.tail_ms } else { base });
        let latency = latency.saturating_add(self.transfer_time(body));
        if kind == Kind::Commit && f.commit_delay_ms > 0 {
            madsim::time::sleep(Duration::from_millis(f.commit_delay_ms)).await;
        }
        madsim::time::sleep(latency / 2).await;
        if !on {
            return Ok(latency);
        }
        let mut edge = 0.0;
        let mut hit = |p: f64| {
            edge += p;
            roll < edge
        };
        let error = if hit(f.p_hang) {
            self.hung.fetch_add(1, Ordering::Relaxed);
            self.trace.event(now_ms(), || format!("store {kind:?} {name}: hung"));
            std::future::pending::<()>().await;
            None
        } else if hit(f.p_500) {
            Some(StorageError::Transient("500 Internal Server Error (injected)".into()))
        } else if hit(f.p_503) {
            Some(StorageError::Throttled {
                message: "503 Server Busy (injected)".into(),
                retry_after: Some(retry_after),
            })
        } else if hit(f.p_timeout) {
            madsim::time::sleep(latency).await;
            Some(StorageError::Timeout)
        } else if hit(f.p_403) {
            Some(StorageError::Forbidden("403 (injected)".into()))
        } else if matches!(kind, Kind::Read | Kind::Stage) && hit(f.p_404) {
            Some(StorageError::NotFound(format!("{name} (injected 404)")))
        } else if kind == Kind::Commit && hit(f.p_412) {
            Some(StorageError::PreconditionFailed(format!("{name} (injected 412)")))
        } else {
            None
        };
        match error {
            Some(error) => {
                self.injected.fetch_add(1, Ordering::Relaxed);
                self.trace
                    .event(now_ms(), || format!("store {kind:?} {name}: injected {error}"));
                Err(error)
            }
            None => Ok(latency),
        }
    }

    async fn finish<T: std::fmt::Debug>(&self, kind: Kind, name: &str, latency: Duration, result: &StorageResult<T>) {
        madsim::time::sleep(latency.saturating_sub(latency / 2)).await;
        self.trace.event(now_ms(), || match result {
            Ok(_) => format!("store {kind:?} {name}: ok"),
            Err(error) => format!("store {kind:?} {name}: {error}"),
        });
    }
}

#[async_trait]
impl BlobStore for SimStore {
    fn describe(&self) -> String {
        "simulated container".into()
    }

    async fn get_properties(&self, name: &str) -> StorageResult<BlobProperties> {
        let latency = self.gate(Kind::Properties, name, 0).await?;
        let result = self.inner.get_properties(name).await;
        self.finish(Kind::Properties, name, latency, &result).await;
        result
    }

    async fn get_block_list(&self, name: &str) -> StorageResult<Vec<CommittedBlock>> {
        let latency = self.gate(Kind::Properties, name, 0).await?;
        let result = self.inner.get_block_list(name).await;
        self.finish(Kind::Properties, name, latency, &result).await;
        result
    }

    async fn read_range(&self, name: &str, offset: u64, buf: &mut [u8], condition: &Condition) -> StorageResult<usize> {
        let latency = self.gate(Kind::Read, name, buf.len()).await?;
        let result = self.inner.read_range(name, offset, buf, condition).await;
        self.finish(Kind::Read, name, latency, &result).await;
        // Drawn only where asked for, so that other worlds' draws, and so
        // their seeds, stay as they were.
        let garbled = result.is_ok()
            && self.faults.p_garbled_read > 0.0
            && self.faults_on.load(Ordering::SeqCst)
            && madsim::rand::thread_rng().gen_bool(self.faults.p_garbled_read.clamp(0.0, 1.0));
        if garbled {
            let claimed = buf.len().saturating_add(1);
            self.trace.event(now_ms(), || {
                format!("store Read {name}: answer claims {claimed} bytes (injected)")
            });
            return Ok(claimed);
        }
        result
    }

    async fn put_block(&self, name: &str, id: &BlockId, data: Bytes) -> StorageResult<()> {
        let latency = self.gate(Kind::Stage, name, data.len()).await?;
        let result = self.inner.put_block(name, id, data).await;
        self.finish(Kind::Stage, name, latency, &result).await;
        result
    }

    async fn put_block_list(&self, name: &str, blocks: &[BlockId], condition: &Condition) -> StorageResult<ETag> {
        let _running = CommitRunning::new(self, name);
        let latency = self.gate(Kind::Commit, name, 0).await?;
        let result = self.inner.put_block_list(name, blocks, condition).await;
        if result.is_ok() {
            self.record(name).await;
        }
        let lost = result.is_ok()
            && self.faults_on.load(Ordering::SeqCst)
            && madsim::rand::thread_rng().gen_bool(self.faults.p_commit_lost_reply.clamp(0.0, 1.0));
        self.finish(Kind::Commit, name, latency, &result).await;
        if lost {
            self.trace
                .event(now_ms(), || format!("store Commit {name}: reply lost"));
            return Err(StorageError::Transient(
                "connection reset after commit (injected)".into(),
            ));
        }
        result
    }

    async fn put_blob(
        &self,
        name: &str,
        data: Bytes,
        is_dir_marker: bool,
        condition: &Condition,
    ) -> StorageResult<ETag> {
        let latency = self.gate(Kind::Commit, name, data.len()).await?;
        let result = self.inner.put_blob(name, data, is_dir_marker, condition).await;
        if result.is_ok() {
            self.record(name).await;
        }
        self.finish(Kind::Commit, name, latency, &result).await;
        result
    }

    async fn delete_blob(&self, name: &str) -> StorageResult<()> {
        let latency = self.gate(Kind::Other, name, 0).await?;
        let result = self.inner.delete_blob(name).await;
        if result.is_ok() {
            self.record(name).await;
        }
        self.finish(Kind::Other, name, latency, &result).await;
        result
    }

    async fn list(&self, prefix: &str) -> StorageResult<Listing> {
        let latency = self.gate(Kind::Other, prefix, 0).await?;
        let result = self.inner.list(prefix).await;
        self.finish(Kind::Other, prefix, latency, &result).await;
        result
    }

    async fn copy_blob(&self, from: &str, to: &str) -> StorageResult<ETag> {
        let latency = self.gate(Kind::Commit, to, 0).await?;
        let result = self.inner.copy_blob(from, to).await;
        if result.is_ok() {
            self.record(to).await;
        }
        self.finish(Kind::Commit, to, latency, &result).await;
        result
    }

    async fn check_access(&self) -> StorageResult<()> {
        Ok(())
    }
}
