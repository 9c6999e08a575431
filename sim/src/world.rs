//! One simulated run: two mounts of the real shell and engine over one
//! simulated container, concurrent clients with a reference model, an
//! outside writer, a fault phase, then a liveness phase and the leak check.
//!
//! What is checked, and where:
//! - the engine invariants of both mounts after every client operation and
//!   every few simulated milliseconds in between (`checker`);
//! - every successful read against the model (`Client::check_read`): exact
//!   bytes for a client's private files, bytes of exactly one committed
//!   version for blobs the outside writer owns, only zeros or bytes some
//!   client wrote at that offset for files shared between clients;
//! - after every successful fsync or close of a private file the store holds
//!   exactly the model; after a failed one it holds one of the versions the
//!   file went through since the last verified commit;
//! - once faults stop, every client finishes within `LIVENESS_BOUND`; after
//!   unmount no pins, owned buffers, pending I/O, waiting requests, open
//!   handles or tasks are left.

use crate::params::Params;
use crate::store::SimStore;
use crate::trace::Trace;
use blobcache::{BlobFs, CacheOptions, FileHandle, FsError, OpenOptions};
use blobcache_engine::{FileId, SimFaults};
use rand::Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Once faults stop, every pending operation must finish within this much
/// simulated time (the shell's longest single wait is its 60 s buffer wait).
pub const LIVENESS_BOUND: Duration = Duration::from_secs(600);
/// How often the invariant checker looks between client operations.
const CHECK_EVERY: Duration = Duration::from_millis(7);
/// How long after the last release of a file its read-ahead may still hold
/// I/O or buffers: the shell cancels at once, so only the tasks woken by
/// the cancellation need to run.
const CANCEL_BOUND: Duration = Duration::from_millis(1);

/// Simulated time since the run started.
pub fn sim_elapsed() -> Duration {
    madsim::time::TimeHandle::try_current()
        .map(|t| t.elapsed())
        .unwrap_or_default()
}

/// Simulated milliseconds since the run started.
pub fn sim_millis() -> u64 {
    madsim::time::TimeHandle::try_current()
        .map(|t| u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The byte a client writes at `offset` for write number `tag`: never zero,
/// so that bytes nobody wrote (which must read as zeros) stand out.
pub fn pattern(tag: u64, offset: u64) -> u8 {
    let mut x = tag.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ offset.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    x ^= x >> 29;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 32;
    (x as u8) | 1
}

fn bytes_of(tag: u64, offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|i| pattern(tag, offset.wrapping_add(i))).collect()
}

/// What a run was asked to do besides the swarm's draw.
#[derive(Clone, Debug, Default)]
pub struct RunSetup {
    /// Audit faults put back into the engine and the shell.
    pub faults: SimFaults,
}

/// The outcome of one run.
#[derive(Debug, Default)]
pub struct Report {
    pub failure: Option<String>,
    pub marks: BTreeSet<&'static str>,
    pub sim_ms: u64,
    pub store_requests: u64,
}

/// State shared by every task of a run.
pub struct World {
    pub params: Params,
    pub trace: Trace,
    pub store: Arc<SimStore>,
    pub mounts: Vec<BlobFs>,
    failure: Mutex<Option<String>>,
    marks: Mutex<BTreeSet<&'static str>>,
    stop: AtomicBool,
    /// Ends the invariant checker, once every client is done.
    checks_done: AtomicBool,
    next_tag: AtomicU64,
    /// Tags written to each shared file, by any client of either mount.
    shared_tags: Mutex<BTreeMap<String, Vec<u64>>>,
    /// Operations in flight per mount.
    busy: Vec<AtomicUsize>,
    /// Names whose state in storage is unknown after an ambiguous failure.
    poisoned: Mutex<BTreeSet<String>>,
    /// Files unlinked and not created again: they must stay gone.
    unlinked: Mutex<BTreeSet<String>>,
    /// Mounts that wrote each shared file.
    shared_writers: Mutex<BTreeMap<String, BTreeSet<usize>>>,
    /// Mounts that have been shut down.
    down: Vec<AtomicBool>,
    /// Files whose last handle on a mount was released, with the time of
    /// that release, until they are opened again.
    released: Mutex<BTreeMap<(usize, FileId), Duration>>,
}

impl World {
    pub fn fail(&self, message: String) {
        if let Ok(mut failure) = self.failure.lock() {
            if failure.is_none() {
                self.trace.event(sim_millis(), || format!("FAILURE {message}"));
                *failure = Some(message);
            }
        }
    }

    pub fn failed(&self) -> bool {
        self.failure.lock().map(|f| f.is_some()).unwrap_or(true)
    }

    pub fn mark(&self, mark: &'static str) {
        if let Ok(mut marks) = self.marks.lock() {
            if marks.insert(mark) {
                self.trace.event(sim_millis(), || format!("mark {mark}"));
            }
        }
    }

    pub fn check_invariants(&self, when: &str) {
        for (index, fs) in self.mounts.iter().enumerate() {
            if let Err(error) = fs.check_invariants() {
                self.fail(format!("mount {index}: invariant broken {when}: {error}"));
            }
        }
    }

    /// A file closed on a mount for longer than `CANCEL_BOUND` has no
    /// read-ahead queued or in flight, no pins, and no fetch at all unless
    /// a commit of it runs.
    fn check_released(&self) {
        let now = sim_elapsed();
        let Ok(mut released) = self.released.lock() else {
            return;
        };
        let mut reopened = Vec::new();
        for (&(mount, file), &at) in released.iter() {
            if now.saturating_sub(at) < CANCEL_BOUND {
                continue;
            }
            let activity = self.mounts[mount].file_activity(file);
            if activity.handles > 0 || activity.requests > 0 {
                reopened.push((mount, file));
                continue;
            }
            let leftover =
                activity.prefetches > 0 || activity.pins > 0 || (activity.fetches > 0 && !activity.committing);
            if leftover {
                self.fail(format!(
                    "mount {mount}: file {file} was closed {} ms ago and still holds {activity:?}",
                    now.saturating_sub(at).as_millis()
                ));
                return;
            }
        }
        for key in reopened {
            released.remove(&key);
        }
    }

    fn tag(&self) -> u64 {
        self.next_tag.fetch_add(1, Ordering::Relaxed)
    }

    fn event(&self, text: impl FnOnce() -> String) {
        self.trace.event(sim_millis(), text);
    }

    fn poison(&self, name: &str) {
        if let Ok(mut poisoned) = self.poisoned.lock() {
            poisoned.insert(name.to_string());
        }
    }

    fn is_poisoned(&self, name: &str) -> bool {
        self.poisoned.lock().map(|p| p.contains(name)).unwrap_or(true)
    }
}

/// A client's private file as the model knows it.
struct Node {
    /// What reads must return.
    content: Vec<u8>,
    /// What the store may hold: the last verified commit (`None`: no blob)
    /// and every content the file had since.
    states: Vec<Option<Vec<u8>>>,
    path: Option<String>,
    handles: usize,
    /// An operation failed since the last verified commit.
    unsure: bool,
    /// After an ambiguous close the content is read back at the next open.
    resync: bool,
}

#[derive(Clone)]
enum Target {
    Private(usize),
    Shared(String),
    Outside(String),
}

struct Open {
    handle: FileHandle,
    target: Target,
    writable: bool,
    pos: u64,
}

struct Client {
    world: Arc<World>,
    mount: usize,
    name: String,
    nodes: Vec<Node>,
    /// Private path slot -> node.
    paths: BTreeMap<usize, usize>,
    open: Vec<Open>,
}

fn private_path(mount: usize, client: usize, slot: usize) -> String {
    format!("p{mount}-{client}-{slot}")
}

fn short(result: &Result<impl std::fmt::Debug, FsError>) -> String {
    match result {
        Ok(_) => "ok".into(),
        Err(error) => format!("err {error}"),
    }
}

impl Client {
    fn fs(&self) -> &BlobFs {
        &self.world.mounts[self.mount]
    }

    fn p(&self) -> &Params {
        &self.world.params
    }

    fn span(&self) -> u64 {
        self.p().block_size.saturating_mul(self.p().max_blocks)
    }

    fn after_op(&self, what: &str) {
        self.world.check_invariants(what);
    }

    /// Coverage marks that a failed operation proves.
    fn observe<T>(&self, result: &Result<T, FsError>) {
        let Err(error) = result else {
            if !self.world.store.faults_on() && self.world.store.injected.load(Ordering::Relaxed) >= 20 {
                self.world.mark("operation succeeded after the outage");
            }
            return;
        };
        let text = error.to_string();
        if text.contains("internal inconsistency") || text.contains("inconsistent completion") {
            self.world.mark("inconsistent input reported as an error");
        }
        if text.contains("no cache buffer became free") {
            self.world.mark("request timed out waiting for a buffer");
        }
        if text.contains("an earlier write") {
            self.world.mark("sticky write error reported");
        }
    }

    /// Traces where the bytes of a stored blob and of the versions the model
    /// allows come from.
    fn explain(&self, path: &str, stored: Option<&[u8]>, versions: &[Option<Vec<u8>>]) {
        let tags = self.world.next_tag.load(Ordering::Relaxed);
        self.world
            .event(|| format!("{}: {path} in the store: {}", self.name, provenance(stored, tags)));
        for (i, version) in versions.iter().enumerate() {
            self.world.event(|| {
                format!(
                    "{}: {path} version {i} of the model: {}",
                    self.name,
                    provenance(version.as_deref(), tags)
                )
            });
        }
    }

    async fn store_content(&self, path: &str) -> Option<Vec<u8>> {
        self.world.store.content(path).await
    }

    /// After a successful durable point: the store must hold the model.
    async fn verify_committed(&mut self, node: usize, what: &str) {
        let Some(path) = self.nodes[node].path.clone() else {
            return;
        };
        if self.world.is_poisoned(&path) {
            return;
        }
        let stored = self.store_content(&path).await;
        let expected = Some(self.nodes[node].content.clone());
        if stored != expected {
            self.explain(&path, stored.as_deref(), std::slice::from_ref(&expected));
            let first = match (&stored, &expected) {
                (Some(a), Some(b)) => a.iter().zip(b).position(|(x, y)| x != y),
                _ => None,
            };
            self.world.fail(format!(
                "{}: after a successful {what} of {path} the store holds {} but the model says {} (first difference at {first:?})",
                self.name,
                describe(stored.as_deref()),
                describe(expected.as_deref())
            ));
        }
        let n = &mut self.nodes[node];
        n.states = vec![expected];
        n.unsure = false;
    }

    /// After a failed durable point: the store holds one of the versions.
    async fn verify_possible(&mut self, node: usize, what: &str) {
        let Some(path) = self.nodes[node].path.clone() else {
            return;
        };
        if self.world.is_poisoned(&path) {
            return;
        }
        let stored = self.store_content(&path).await;
        if !self.nodes[node].states.contains(&stored) {
            self.explain(&path, stored.as_deref(), &self.nodes[node].states);
            self.world.fail(format!(
                "{}: after a failed {what} of {path} the store holds {}, none of the {} versions it may hold",
                self.name,
                describe(stored.as_deref()),
                self.nodes[node].states.len()
            ));
        }
        self.nodes[node].unsure = true;
    }

    fn pick_open(&self) -> Option<usize> {
        if self.open.is_empty() {
            None
        } else {
            Some(madsim::rand::thread_rng().gen_range(0..self.open.len()))
        }
    }

    async fn run(mut self) -> Client {
        let mut done = 0;
        while done < self.p().ops_per_client && !self.world.stop.load(Ordering::SeqCst) && !self.world.failed() {
            done += 1;
            self.world.busy[self.mount].fetch_add(1, Ordering::SeqCst);
            self.step().await;
            self.world.busy[self.mount].fetch_sub(1, Ordering::SeqCst);
            self.after_op("after a client operation");
        }
        // Close everything, as a process exiting would (after a failure
        // the run ends at once: the failure is what matters).
        while let Some(index) = self.open.len().checked_sub(1).filter(|_| !self.world.failed()) {
            self.close(index).await;
        }
        self.world.event(|| format!("{} done", self.name));
        self
    }

    async fn step(&mut self) {
        let m = self.p().mix.clone();
        let weights = [
            m.seq_read,
            m.random_read,
            m.write,
            m.append,
            m.truncate,
            m.fsync,
            m.reopen,
            m.dup,
            m.unlink,
            m.rename,
        ];
        let total: u32 = weights.iter().sum();
        if self.open.is_empty() || total == 0 || madsim::rand::thread_rng().gen_ratio(1, 12) {
            self.open_some().await;
            return;
        }
        let mut roll = madsim::rand::thread_rng().gen_range(0..total);
        let mut choice = 0;
        for (i, w) in weights.iter().enumerate() {
            if roll < *w {
                choice = i;
                break;
            }
            roll -= w;
        }
        let Some(index) = self.pick_open() else {
            return;
        };
        if self.p().check_read_latency && choice <= 1 && !matches!(self.open[index].target, Target::Outside(_)) {
            // Reading back what it wrote would make a read wait for a commit.
            return;
        }
        match choice {
            0 => self.read(index, true).await,
            1 => self.read(index, false).await,
            2 => self.write(index, false).await,
            3 => self.write(index, true).await,
            4 => self.truncate(index).await,
            5 => self.fsync(index).await,
            6 => self.close(index).await,
            7 => self.dup(index).await,
            8 => self.unlink(index).await,
            _ => self.rename(index).await,
        }
    }

    async fn open_some(&mut self) {
        let p = self.p().clone();
        let mut rng = madsim::rand::thread_rng();
        let kind = rng.gen_range(0..10);
        if kind < 2 && p.shared_files > 0 {
            let path = format!("s{}", rng.gen_range(0..p.shared_files));
            let result = self.fs().create(&path, false).await;
            self.world
                .event(|| format!("{} create {path}: {}", self.name, short(&result)));
            if let Ok((handle, _)) = result {
                self.open.push(Open {
                    handle,
                    target: Target::Shared(path),
                    writable: true,
                    pos: 0,
                });
            }
            return;
        }
        if kind < 4 && p.outside_files > 0 {
            let path = format!("o{}", rng.gen_range(0..p.outside_files));
            let options = OpenOptions {
                read: true,
                write: false,
                truncate: false,
            };
            let result = self.fs().open(&path, options).await;
            self.world
                .event(|| format!("{} open {path}: {}", self.name, short(&result)));
            if let Ok(handle) = result {
                self.open.push(Open {
                    handle,
                    target: Target::Outside(path),
                    writable: false,
                    pos: 0,
                });
            }
            return;
        }
        let slot = rng.gen_range(0..p.private_files * 2);
        let path = private_path(self.mount, self.client_index(), slot);
        if self.world.is_poisoned(&path) {
            return;
        }
        match self.paths.get(&slot).copied() {
            Some(node) => {
                if self.nodes[node].handles == 0 && self.world.store.committing(&path) {
                    self.world.mark("open while the last release's commit runs");
                }
                let truncate = rng.gen_ratio(1, 10);
                let options = OpenOptions {
                    read: true,
                    write: true,
                    truncate,
                };
                let result = self.fs().open(&path, options).await;
                self.world
                    .event(|| format!("{} open {path} trunc={truncate}: {}", self.name, short(&result)));
                match result {
                    Ok(handle) => {
                        self.open.push(Open {
                            handle,
                            target: Target::Private(node),
                            writable: true,
                            pos: 0,
                        });
                        let n = &mut self.nodes[node];
                        n.handles += 1;
                        if n.resync && n.handles == 1 && !truncate {
                            self.resync(node, self.open.len() - 1).await;
                        }
                        if truncate {
                            self.nodes[node].resync = false;
                            let n = &mut self.nodes[node];
                            n.content.clear();
                            let state = Some(n.content.clone());
                            n.states.push(state);
                        }
                    }
                    Err(FsError::NotFound(_)) if self.nodes[node].handles == 0 => {
                        // Only a file whose creation was never committed can vanish.
                        let n = &self.nodes[node];
                        if !n.states.contains(&None) {
                            self.world.fail(format!("{}: {path} vanished from storage", self.name));
                        }
                        // The path is free for a new file now; this node must not
                        // be checked against whatever that file commits.
                        self.nodes[node].path = None;
                        self.paths.remove(&slot);
                    }
                    Err(_) => {}
                }
            }
            None => {
                let result = self.fs().create(&path, true).await;
                self.world
                    .event(|| format!("{} create {path}: {}", self.name, short(&result)));
                match result {
                    Ok((handle, _)) => {
                        self.nodes.push(Node {
                            content: Vec::new(),
                            states: vec![None, Some(Vec::new())],
                            path: Some(path.clone()),
                            handles: 1,
                            unsure: true,
                            resync: false,
                        });
                        let node = self.nodes.len() - 1;
                        self.paths.insert(slot, node);
                        if let Ok(mut unlinked) = self.world.unlinked.lock() {
                            unlinked.remove(&path);
                        }
                        self.open.push(Open {
                            handle,
                            target: Target::Private(node),
                            writable: true,
                            pos: 0,
                        });
                    }
                    Err(FsError::Exists(_)) => {
                        self.world.fail(format!(
                            "{}: exclusive create of {path}, which the model says does not exist, failed",
                            self.name
                        ));
                    }
                    Err(_) => {}
                }
            }
        }
    }

    fn client_index(&self) -> usize {
        self.name.rsplit('c').next().and_then(|s| s.parse().ok()).unwrap_or(0)
    }

    /// Reads a whole private file back after a close whose outcome was
    /// unknown, checks it is one of the versions, and adopts it.
    async fn resync(&mut self, node: usize, open: usize) {
        let handle = self.open[open].handle;
        let len = u32::try_from(self.span().saturating_mul(4)).unwrap_or(u32::MAX);
        let result = self.fs().read(handle, 0, len).await;
        match result {
            Ok(data) => {
                let n = &mut self.nodes[node];
                if !n.states.contains(&Some(data.clone())) {
                    self.world.fail(format!(
                        "{}: reopened {:?} reads {}, none of the {} versions it may hold",
                        self.name,
                        n.path,
                        describe(Some(&data)),
                        n.states.len()
                    ));
                }
                n.content = data;
                n.resync = false;
            }
            Err(_) => {
                // Unknown content: stop using this file, and stop checking
                // reads through the handle just opened against it.
                if let Some(path) = self.nodes[node].path.clone() {
                    self.world.poison(&path);
                }
                self.nodes[node].path = None;
                self.forget_node_reads(node);
            }
        }
    }

    async fn read(&mut self, index: usize, sequential: bool) {
        let span = self.span();
        let bs = self.p().block_size;
        let huge = self.p().huge_offsets;
        let (offset, len) = {
            let mut rng = madsim::rand::thread_rng();
            let len = rng.gen_range(1..=bs * 3) as u32;
            let offset = if huge && rng.gen_ratio(1, 20) {
                u64::MAX - rng.gen_range(0..bs * 2)
            } else if sequential {
                self.open[index].pos
            } else {
                rng.gen_range(0..span + bs)
            };
            (offset, len)
        };
        let handle = self.open[index].handle;
        let started = sim_elapsed();
        let in_fault_phase = !self.world.stop.load(Ordering::SeqCst);
        let queued_before = {
            let (_, o) = self.fs().engine_stats();
            o.io_pending.saturating_sub(o.io_in_flight)
        };
        let result = self.fs().read(handle, offset, len).await;
        let took = sim_elapsed().saturating_sub(started);
        if self.p().check_read_latency && in_fault_phase && !self.world.stop.load(Ordering::SeqCst) {
            self.check_read_latency(offset, len, took, queued_before);
        }
        self.observe(&result);
        if result.is_err() && !matches!(self.open[index].target, Target::Outside(_)) {
            self.world.mark("read failed while waiting on its block");
        }
        self.world.event(|| {
            format!(
                "{} read h{} @{offset}+{len}: {}",
                self.name,
                handle.0,
                match &result {
                    Ok(d) => format!("{} bytes", d.len()),
                    Err(e) => format!("err {e}"),
                }
            )
        });
        if offset > span.saturating_mul(1000) {
            self.world.mark("huge offset read");
        }
        let Ok(data) = result else {
            return;
        };
        if data.len() > len as usize {
            self.world
                .fail(format!("{}: read of {len} bytes returned {}", self.name, data.len()));
        }
        self.open[index].pos = if data.is_empty() {
            0
        } else {
            offset.saturating_add(data.len() as u64)
        };
        self.check_read(index, offset, len, &data);
    }

    /// A demand read waits for no background work queued before it.
    fn check_read_latency(&self, offset: u64, len: u32, took: Duration, queued_before: usize) {
        let bound = demand_read_bound(self.p(), offset, len);
        if took > Duration::ZERO && queued_before >= 8 {
            self.world.mark("demand read behind queued background I/O");
        }
        if took > bound {
            self.world.fail(format!(
                "{}: read @{offset}+{len} took {} ms, more than the {} ms a demand read may wait ({queued_before} commands were queued when it came)",
                self.name,
                took.as_millis(),
                bound.as_millis()
            ));
        }
    }

    fn check_read(&self, index: usize, offset: u64, len: u32, data: &[u8]) {
        match &self.open[index].target {
            Target::Private(node) => {
                let content = &self.nodes[*node].content;
                let start = usize::try_from(offset).unwrap_or(usize::MAX).min(content.len());
                let end = start.saturating_add(len as usize).min(content.len());
                let expected = &content[start..end];
                if self.p().pool_buffers <= 3 && expected.contains(&0) && data == expected {
                    self.world.mark("zeros read back from a reused buffer");
                }
                if data != expected {
                    let first = data.iter().zip(expected).position(|(a, b)| a != b);
                    self.world.fail(format!(
                        "{}: read of {:?} at {offset}+{len} returned {} bytes, model has {} (first difference at +{:?}; model size {})",
                        self.name,
                        self.nodes[*node].path,
                        data.len(),
                        expected.len(),
                        first,
                        content.len()
                    ));
                }
            }
            Target::Shared(path) => {
                let tags = self
                    .world
                    .shared_tags
                    .lock()
                    .map(|t| t.get(path).cloned().unwrap_or_default())
                    .unwrap_or_default();
                for (i, byte) in data.iter().enumerate() {
                    let at = offset.saturating_add(i as u64);
                    if *byte != 0 && !tags.iter().any(|tag| pattern(*tag, at) == *byte) {
                        self.world.fail(format!(
                            "{}: read of shared {path} at {at} returned byte {byte:#x} that no client wrote there",
                            self.name
                        ));
                        return;
                    }
                }
            }
            Target::Outside(path) => {
                let versions = self.world.store.versions(path);
                let matches = versions.iter().flatten().any(|version| {
                    let start = usize::try_from(offset).unwrap_or(usize::MAX).min(version.len());
                    let end = start.saturating_add(data.len()).min(version.len());
                    &version[start..end] == data
                });
                if !matches {
                    self.world.fail(format!(
                        "{}: read of {path} at {offset} ({} bytes) matches none of its {} versions",
                        self.name,
                        data.len(),
                        versions.len()
                    ));
                }
            }
        }
    }

    async fn write(&mut self, index: usize, append: bool) {
        if !self.open[index].writable {
            return self.read(index, false).await;
        }
        let span = self.span();
        let bs = self.p().block_size;
        let huge = self.p().huge_offsets;
        let target = self.open[index].target.clone();
        let handle = self.open[index].handle;
        let tag = self.world.tag();
        let (mut offset, len, too_far) = {
            let mut rng = madsim::rand::thread_rng();
            let len = rng.gen_range(1..=bs * 2) as usize;
            if huge && rng.gen_ratio(1, 20) {
                let max = bs.saturating_mul(blobcache_engine::MAX_BLOCKS_PER_BLOB);
                (max - rng.gen_range(0..len as u64), len, true)
            } else {
                (rng.gen_range(0..span), len, false)
            }
        };
        if let (Target::Private(node), true, false) = (&target, append, too_far) {
            offset = self.nodes[*node].content.len() as u64;
        }
        if let (Target::Shared(path), true, false) = (&target, append, too_far) {
            if let Ok(attr) = self.fs().getattr(path).await {
                offset = attr.size;
            }
        }
        if offset > span * 3 && !too_far {
            offset = span;
        }
        let data = bytes_of(tag, offset, len);
        if let Target::Shared(path) = &target {
            if let Ok(mut tags) = self.world.shared_tags.lock() {
                tags.entry(path.clone()).or_default().push(tag);
            }
        }
        let result = self.fs().write(handle, offset, data.clone()).await;
        self.observe(&result);
        if let (Target::Shared(path), Ok(_)) = (&target, &result) {
            if let Ok(mut writers) = self.world.shared_writers.lock() {
                let mounts = writers.entry(path.clone()).or_default();
                mounts.insert(self.mount);
                if mounts.len() == 2 {
                    self.world.mark("both mounts wrote one shared file");
                }
            }
        }
        self.world.event(|| {
            format!(
                "{} write h{} @{offset}+{len} tag {tag}: {:?}",
                self.name, handle.0, result
            )
        });
        if too_far {
            self.world.mark("huge offset write");
            if !matches!(result, Err(FsError::FileTooLarge(_) | FsError::ShuttingDown)) {
                self.world.fail(format!(
                    "{}: a write ending past the largest blob size ({offset}+{len}) gave {result:?}, not EFBIG",
                    self.name
                ));
            }
            return;
        }
        let Ok(written) = result else {
            return;
        };
        if written as usize > len {
            self.world
                .fail(format!("{}: wrote {written} of {len} bytes", self.name));
            return;
        }
        if let Target::Private(node) = target {
            let n = &mut self.nodes[node];
            let start = offset as usize;
            let end = start + written as usize;
            if n.content.len() < end {
                n.content.resize(end, 0);
            }
            n.content[start..end].copy_from_slice(&data[..written as usize]);
            let state = Some(n.content.clone());
            n.states.push(state);
        }
    }

    async fn truncate(&mut self, index: usize) {
        let Target::Private(node) = self.open[index].target else {
            return self.read(index, false).await;
        };
        let Some(path) = self.nodes[node].path.clone() else {
            return;
        };
        let size = madsim::rand::thread_rng().gen_range(0..=self.span());
        let handle = self.open[index].handle;
        let result = self.fs().truncate(&path, Some(handle), size).await;
        self.world.event(|| {
            format!(
                "{} truncate {path} h{} to {size}: {}",
                self.name,
                handle.0,
                short(&result)
            )
        });
        match result {
            Ok(_) => {
                let n = &mut self.nodes[node];
                n.content.resize(size as usize, 0);
                let state = Some(n.content.clone());
                n.states.push(state);
            }
            // The truncate may have happened and only the attributes failed.
            Err(_) => {
                self.world.poison(&path);
                self.nodes[node].path = None;
                self.nodes[node].states.clear();
                self.forget_node_reads(node);
            }
        }
    }

    /// The content of this node is no longer known: stop checking its reads.
    fn forget_node_reads(&mut self, node: usize) {
        for open in &mut self.open {
            if matches!(open.target, Target::Private(n) if n == node) {
                open.target = Target::Shared(format!("unknown-{node}"));
                open.writable = false;
            }
        }
        if let Ok(mut tags) = self.world.shared_tags.lock() {
            tags.entry(format!("unknown-{node}"))
                .or_default()
                .extend(0..self.world.next_tag.load(Ordering::Relaxed));
        }
    }

    async fn fsync(&mut self, index: usize) {
        let handle = self.open[index].handle;
        let result = self.fs().fsync(handle).await;
        self.observe(&result);
        self.world
            .event(|| format!("{} fsync h{}: {}", self.name, handle.0, short(&result)));
        if let Target::Private(node) = self.open[index].target {
            match result {
                Ok(()) => self.verify_committed(node, "fsync").await,
                Err(_) => self.verify_possible(node, "fsync").await,
            }
        }
    }

    /// close(2): flush, then release.
    async fn close(&mut self, index: usize) {
        let open = self.open.remove(index);
        let skip_flush = self.p().release_without_flush && madsim::rand::thread_rng().gen_bool(0.5);
        let flushed = if skip_flush {
            Err(FsError::Io("not flushed".into()))
        } else {
            self.fs().flush(open.handle).await
        };
        self.observe(&flushed);
        let file = self.fs().file_of(open.handle);
        if let Some(file) = file {
            let activity = self.fs().file_activity(file);
            if activity.handles == 1 && activity.prefetches_in_flight > 0 {
                self.world.mark("last release with read-ahead in flight");
            }
        }
        let released = self.fs().release(open.handle).await;
        if let Some(file) = file.filter(|f| self.fs().file_activity(*f).handles == 0) {
            if let Ok(mut closed) = self.world.released.lock() {
                closed.insert((self.mount, file), sim_elapsed());
            }
        }
        self.world.event(|| {
            format!(
                "{} close h{}: flush {} release {}",
                self.name,
                open.handle.0,
                short(&flushed),
                short(&released)
            )
        });
        if let Target::Private(node) = open.target {
            match flushed {
                Ok(()) => self.verify_committed(node, "close").await,
                // The release commits in the background: nothing to check yet.
                Err(_) if skip_flush => self.nodes[node].unsure = true,
                Err(_) => self.verify_possible(node, "close").await,
            }
            let n = &mut self.nodes[node];
            n.handles = n.handles.saturating_sub(1);
            if n.handles == 0 && n.unsure {
                n.resync = true;
            }
        }
    }

    async fn dup(&mut self, index: usize) {
        let target = self.open[index].target.clone();
        let path = match &target {
            Target::Private(node) => match &self.nodes[*node].path {
                Some(path) => path.clone(),
                None => return,
            },
            Target::Shared(path) | Target::Outside(path) => path.clone(),
        };
        if path.starts_with("unknown") {
            return;
        }
        let writable = self.open[index].writable;
        let options = OpenOptions {
            read: true,
            write: writable,
            truncate: false,
        };
        let result = self.fs().open(&path, options).await;
        self.world
            .event(|| format!("{} dup {path}: {}", self.name, short(&result)));
        if let Ok(handle) = result {
            if let Target::Private(node) = target {
                self.nodes[node].handles += 1;
            }
            self.world.mark("dup handle");
            self.open.push(Open {
                handle,
                target,
                writable,
                pos: 0,
            });
        }
    }

    async fn unlink(&mut self, index: usize) {
        let Target::Private(node) = self.open[index].target else {
            return self.read(index, true).await;
        };
        let Some(path) = self.nodes[node].path.clone() else {
            return;
        };
        let result = self.fs().unlink(&path).await;
        self.world
            .event(|| format!("{} unlink open {path}: {}", self.name, short(&result)));
        self.world.mark("unlink open file");
        let n = &mut self.nodes[node];
        n.path = None;
        self.paths.retain(|_, v| *v != node);
        match result {
            Ok(()) => {
                if let Ok(mut unlinked) = self.world.unlinked.lock() {
                    unlinked.insert(path);
                }
            }
            Err(_) => self.world.poison(&path),
        }
    }

    async fn rename(&mut self, index: usize) {
        let Target::Private(node) = self.open[index].target else {
            return self.read(index, true).await;
        };
        let Some(from) = self.nodes[node].path.clone() else {
            return;
        };
        let slots = self.p().private_files * 2;
        let Some(slot) = (0..slots).find(|s| {
            !self.paths.contains_key(s)
                && !self
                    .world
                    .is_poisoned(&private_path(self.mount, self.client_index(), *s))
        }) else {
            return;
        };
        let to = private_path(self.mount, self.client_index(), slot);
        let result = self.fs().rename(&from, &to).await;
        self.world
            .event(|| format!("{} rename open {from} -> {to}: {}", self.name, short(&result)));
        self.world.mark("rename open file");
        match result {
            Ok(()) => {
                self.paths.retain(|_, v| *v != node);
                self.paths.insert(slot, node);
                self.nodes[node].path = Some(to.clone());
                if let Ok(mut unlinked) = self.world.unlinked.lock() {
                    unlinked.insert(from);
                    unlinked.remove(&to);
                }
                self.verify_committed(node, "rename").await;
            }
            Err(_) => {
                self.world.poison(&from);
                self.world.poison(&to);
                self.paths.retain(|_, v| *v != node);
                self.nodes[node].path = None;
            }
        }
    }

    /// Final check of every private file once everything is unmounted.
    async fn final_check(&self, nodes: &[Node]) {
        for n in nodes {
            let Some(path) = &n.path else { continue };
            if self.world.is_poisoned(path) {
                continue;
            }
            let stored = self.store_content(path).await;
            if !n.states.contains(&stored) {
                self.explain(path, stored.as_deref(), &n.states);
                self.world.fail(format!(
                    "{}: after unmount the store holds {} for {path}, none of the {} versions it may hold",
                    self.name,
                    describe(stored.as_deref()),
                    n.states.len()
                ));
            }
        }
    }
}

/// Which write put each byte of `content` there, as runs `start..end:tag`
/// (`0` for zeros), choosing at each offset the tag that explains the
/// longest run: enough to tell a torn or stale commit from a missing
/// version when a durability check fails.
fn provenance(content: Option<&[u8]>, tags: u64) -> String {
    let Some(data) = content else {
        return "no blob".into();
    };
    let mut runs = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let run_of = |tag: u64| {
            data[at..]
                .iter()
                .enumerate()
                .take_while(|(i, b)| {
                    let offset = (at + i) as u64;
                    if tag == 0 {
                        **b == 0
                    } else {
                        **b == pattern(tag, offset)
                    }
                })
                .count()
        };
        let (tag, len) = (0..tags)
            .map(|tag| (tag, run_of(tag)))
            .max_by_key(|(tag, len)| (*len, std::cmp::Reverse(*tag)))
            .unwrap_or((0, 0));
        let len = len.max(1);
        let label = if run_of(tag) == 0 {
            "?".to_string()
        } else {
            tag.to_string()
        };
        runs.push(format!("{at}..{}:{label}", at + len));
        at += len;
    }
    runs.join(" ")
}

/// The longest a read may take when demand work goes first. Every block it
/// touches is fetched at most twice (a block another random reader fetched
/// only part of is fetched again); each fetch waits for one command in
/// flight to finish, then for the demand commands queued before it: at most
/// one per other client of the mount, a load counting as two requests; then
/// it runs. Background work queued before it does not count: that is the
/// point.
pub fn demand_read_bound(p: &Params, offset: u64, len: u32) -> Duration {
    let bs = p.block_size.max(1);
    let last = offset.saturating_add(u64::from(len).max(1) - 1) / bs;
    let blocks = last.saturating_sub(offset / bs).saturating_add(1);
    let clients = p.clients_per_mount as u64;
    let request = p.faults.latency_max_ms.max(p.faults.latency_min_ms);
    let per_fetch = request.saturating_mul(2 * clients + 1);
    Duration::from_millis(blocks.saturating_mul(2).saturating_mul(per_fetch).saturating_add(5))
}

fn describe(content: Option<&[u8]>) -> String {
    match content {
        None => "no blob".into(),
        Some(data) => {
            let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
            for b in data {
                hash = (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
            }
            format!("{} bytes (hash {hash:016x})", data.len())
        }
    }
}

async fn outside_writer(world: Arc<World>) {
    let span = world.params.block_size * world.params.max_blocks;
    while !world.stop.load(Ordering::SeqCst) {
        let (wait, file, delete, len) = {
            let mut rng = madsim::rand::thread_rng();
            (
                rng.gen_range(50..800),
                rng.gen_range(0..world.params.outside_files),
                rng.gen_ratio(1, 5),
                rng.gen_range(0..=span as usize),
            )
        };
        madsim::time::sleep(Duration::from_millis(wait)).await;
        let path = format!("o{file}");
        if delete {
            world.store.outside_delete(&path).await;
        } else {
            let tag = world.tag();
            world.store.outside_put(&path, bytes_of(tag, 0, len)).await;
        }
        world.mark("outside writer changed a blob");
    }
}

async fn checker(world: Arc<World>) {
    while !world.checks_done.load(Ordering::SeqCst) && !world.failed() {
        // Once faults stop, little happens but timeouts: look less often.
        let every = if world.stop.load(Ordering::SeqCst) {
            CHECK_EVERY * 100
        } else {
            CHECK_EVERY
        };
        madsim::time::sleep(every).await;
        world.check_invariants("between operations");
        world.check_released();
    }
}

fn cache_options(params: &Params, seed: u64, mount: usize, faults: SimFaults) -> CacheOptions {
    CacheOptions {
        block_size: params.block_size,
        memory_bytes: params.block_size * params.pool_buffers,
        prefetch_blocks: params.prefetch_blocks,
        parallelism: params.parallelism,
        attribute_timeout: Duration::from_millis(500),
        request_timeout: params.request_timeout,
        max_attempts: params.max_attempts,
        seed: seed.wrapping_mul(31).wrapping_add(mount as u64),
        faults,
    }
}

/// Runs one world to its end.
pub async fn run(seed: u64, params: Params, setup: RunSetup, trace: Trace) -> Report {
    let tasks_at_start = madsim::runtime::Handle::current().metrics().num_tasks();
    let store = Arc::new(SimStore::new(params.faults.clone(), trace.clone()));
    for k in 0..params.outside_files {
        let len = (params.block_size * params.max_blocks / 2) as usize;
        store
            .outside_put(&format!("o{k}"), bytes_of(u64::MAX - k as u64, 0, len))
            .await;
    }
    let mut mounts = Vec::new();
    for mount in 0..2 {
        let options = cache_options(&params, seed, mount, setup.faults);
        match BlobFs::new(store.clone(), options) {
            Ok(fs) => mounts.push(fs),
            Err(error) => {
                return Report {
                    failure: Some(format!("mount {mount} failed: {error}")),
                    ..Report::default()
                }
            }
        }
    }
    let world = Arc::new(World {
        params: params.clone(),
        trace: trace.clone(),
        store,
        mounts,
        failure: Mutex::new(None),
        marks: Mutex::new(BTreeSet::new()),
        stop: AtomicBool::new(false),
        checks_done: AtomicBool::new(false),
        next_tag: AtomicU64::new(1),
        shared_tags: Mutex::new(BTreeMap::new()),
        busy: vec![AtomicUsize::new(0), AtomicUsize::new(0)],
        poisoned: Mutex::new(BTreeSet::new()),
        unlinked: Mutex::new(BTreeSet::new()),
        down: vec![AtomicBool::new(false), AtomicBool::new(false)],
        shared_writers: Mutex::new(BTreeMap::new()),
        released: Mutex::new(BTreeMap::new()),
    });
    world.event(|| format!("world {params:?}"));
    let checker = tokio::spawn(checker(world.clone()));
    let writer =
        (params.outside_writer && params.outside_files > 0).then(|| tokio::spawn(outside_writer(world.clone())));
    let mut clients = Vec::new();
    for mount in 0..2 {
        for c in 0..params.clients_per_mount {
            let client = Client {
                world: world.clone(),
                mount,
                name: format!("m{mount}c{c}"),
                nodes: Vec::new(),
                paths: BTreeMap::new(),
                open: Vec::new(),
            };
            clients.push(tokio::spawn(client.run()));
        }
    }
    let unmount = params.unmount_while_busy.then(|| {
        let world = world.clone();
        let at = Duration::from_millis(madsim::rand::thread_rng().gen_range(0..params.fault_phase.as_millis() as u64));
        tokio::spawn(async move {
            madsim::time::sleep(at).await;
            if world.busy[0].load(Ordering::SeqCst) > 0 {
                world.mark("unmount while busy");
            }
            if world.mounts[0].engine_stats().1.io_in_flight > 0 {
                world.mark("unmount with I/O in flight");
            }
            world.down[0].store(true, Ordering::SeqCst);
            let result = world.mounts[0].shutdown().await;
            world.event(|| format!("mount 0 shut down while busy: {}", short(&result)));
        })
    });

    madsim::time::sleep(params.fault_phase).await;
    if world.store.hung.load(Ordering::Relaxed) >= 2 {
        world.mark("storage requests hung");
    }
    world.store.stop_faults();
    world.stop.store(true, Ordering::SeqCst);
    world.event(|| "faults stop".to_string());
    let liveness_start = sim_millis();
    let mut finished = Vec::new();
    let joined = madsim::time::timeout(LIVENESS_BOUND, async {
        for client in clients {
            if let Ok(done) = client.await {
                finished.push(done);
            }
        }
        if let Some(unmount) = unmount {
            let _ = unmount.await;
        }
    })
    .await;
    if joined.is_err() {
        let occupancy: Vec<_> = world.mounts.iter().map(|fs| fs.engine_stats().1).collect();
        world.fail(format!(
            "liveness: operations still pending {} s after faults stopped; occupancy {occupancy:?}",
            LIVENESS_BOUND.as_secs()
        ));
    } else {
        world.event(|| format!("clients done {} ms after faults stopped", sim_millis() - liveness_start));
    }
    world.checks_done.store(true, Ordering::SeqCst);
    if world.failed() {
        let failure = world.failure.lock().ok().and_then(|f| f.clone());
        let marks = world.marks.lock().map(|m| m.clone()).unwrap_or_default();
        return Report {
            failure,
            marks,
            sim_ms: sim_millis(),
            store_requests: world.store.requests.load(Ordering::Relaxed),
        };
    }
    for (index, fs) in world.mounts.iter().enumerate() {
        match madsim::time::timeout(LIVENESS_BOUND, fs.shutdown()).await {
            Ok(result) => world.event(|| format!("mount {index} unmounted: {}", short(&result))),
            Err(_) => world.fail(format!("liveness: unmount of mount {index} did not finish")),
        }
        // Unmount has returned: nothing may be left in flight.
        let (_, o) = fs.engine_stats();
        if o.io_pending != 0 || o.io_in_flight != 0 || o.waiting_requests != 0 || o.pins != 0 {
            world.fail(format!(
                "leak: mount {index} returned from unmount with work left: {o:?}"
            ));
        }
    }
    let _ = checker.await;
    if let Some(writer) = writer {
        let _ = writer.await;
    }
    world.check_invariants("after unmount");
    for client in &finished {
        client.final_check(&client.nodes).await;
    }
    drop(finished);
    // Give the tasks that carried the last completions a moment to end.
    madsim::time::sleep(Duration::from_secs(1)).await;
    if !world.failed() {
        leak_check(&world, tasks_at_start).await;
    }
    shared_final_check(&world).await;
    let unlinked: Vec<String> = world
        .unlinked
        .lock()
        .map(|u| u.iter().cloned().collect())
        .unwrap_or_default();
    for path in unlinked {
        if !world.is_poisoned(&path) && world.store.content(&path).await.is_some() {
            world.fail(format!("{path} was unlinked but exists in storage after unmount"));
        }
    }
    let failure = world.failure.lock().ok().and_then(|f| f.clone());
    let marks = world.marks.lock().map(|m| m.clone()).unwrap_or_default();
    Report {
        failure,
        marks,
        sim_ms: sim_millis(),
        store_requests: world.store.requests.load(Ordering::Relaxed),
    }
}

/// Every byte of a shared file in storage is zero or a byte some client
/// wrote at exactly that offset: blocks of one write never land elsewhere.
async fn shared_final_check(world: &World) {
    let tags = world.shared_tags.lock().map(|t| t.clone()).unwrap_or_default();
    for (path, tags) in tags {
        if path.starts_with("unknown") {
            continue;
        }
        let Some(content) = world.store.content(&path).await else {
            continue;
        };
        for (at, byte) in content.iter().enumerate() {
            if *byte != 0 && !tags.iter().any(|tag| pattern(*tag, at as u64) == *byte) {
                world.fail(format!(
                    "shared {path} in storage holds byte {byte:#x} at {at} that no client wrote there"
                ));
                break;
            }
        }
    }
}

async fn leak_check(world: &World, tasks_at_start: usize) {
    for (index, fs) in world.mounts.iter().enumerate() {
        let (_, o) = fs.engine_stats();
        if o.pins != 0 || o.io_pending != 0 || o.io_in_flight != 0 || o.waiting_requests != 0 || o.open_handles != 0 {
            world.fail(format!("leak: mount {index} after unmount: {o:?}"));
        }
        // Buffers may stay with clean cached blocks; that each buffer is
        // free, held by a block or lent to I/O is the invariant checked above.
    }
    let tasks = madsim::runtime::Handle::current().metrics().num_tasks();
    if tasks > tasks_at_start {
        world.fail(format!(
            "leak: {} tasks left after unmount (at start {tasks_at_start})",
            tasks
        ));
    }
}
