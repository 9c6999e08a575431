//! The embedded default backend: a container kept in a local directory.
//!
//! Blob `a/b/c.txt` is the regular file `ROOT/a/b/c.txt`, so the files can be
//! used directly; directory markers are real directories, and every
//! directory counts as one. Block-blob bookkeeping lives under
//! `ROOT/.blobcache/`, which is hidden from listings:
//! - `staged/<hex name>/<hex id>`: uncommitted blocks;
//! - `blocklists/<hex name>`: the committed block list of a blob, with the
//!   ETag it describes; it is ignored when the file has changed since;
//! - `tmp/`: files being assembled before they are renamed into place.
//!
//! The ETag of a blob is derived from its file's metadata, so it also
//! changes when the file is edited outside blobcache. Every write sets a
//! modification time never handed out before by this process, because
//! kernel timestamps are coarse and inode numbers are reused.

use super::{
    BlobProperties, BlobStore, BlockId, CommittedBlock, Condition, ETag, ListedBlob, Listing, StorageError,
    StorageResult,
};
use async_trait::async_trait;
use bytes::Bytes;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const META_DIR: &str = ".blobcache";
const MAX_BLOCKS_PER_BLOB: usize = 50_000;
/// Longest hex run kept in one path component (file names are limited to
/// 255 bytes); longer encoded names are split into several directories.
const HEX_COMPONENT_LEN: usize = 200;
const BLOCKLIST_HEADER: &str = "blobcache-blocklist 1";

/// A blob container in a local directory.
#[derive(Debug)]
pub struct LocalStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    staged: PathBuf,
    blocklists: PathBuf,
    tmp: PathBuf,
    /// Serialises the check-then-replace steps of writes, so that conditions
    /// hold at the moment a file is replaced.
    write_lock: Mutex<()>,
    tmp_counter: AtomicU64,
}

impl LocalStore {
    /// Opens (creating it if missing) the container kept in `root`.
    pub fn open(root: impl Into<PathBuf>) -> StorageResult<LocalStore> {
        let root = root.into();
        let root = std::path::absolute(&root).unwrap_or(root);
        fs::create_dir_all(&root)
            .map_err(|e| StorageError::Other(format!("cannot create the storage directory {}: {e}", root.display())))?;
        let meta = root.join(META_DIR);
        let inner = Inner {
            staged: meta.join("staged"),
            blocklists: meta.join("blocklists"),
            tmp: meta.join("tmp"),
            root,
            write_lock: Mutex::new(()),
            tmp_counter: AtomicU64::new(0),
        };
        for dir in [&inner.staged, &inner.blocklists, &inner.tmp] {
            fs::create_dir_all(dir).map_err(|e| {
                StorageError::Other(format!(
                    "cannot create the bookkeeping directory {}: {e}",
                    dir.display()
                ))
            })?;
        }
        Ok(LocalStore { inner: Arc::new(inner) })
    }

    /// The directory holding the container.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    // The simulator warns about blocking calls; the store still works
    // there, it just runs the file system calls on the simulation thread.
    #[cfg_attr(madsim, allow(deprecated))]
    async fn blocking<T, F>(&self, f: F) -> StorageResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> StorageResult<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StorageError::Other(format!("local storage task failed: {e}")))?
    }
}

/// How much one blocking read task reads at a time.
const READ_PIECE: usize = 1 << 20;

/// Reads up to `len` bytes at `offset`; fewer only at the end of the file.
fn read_full_at(file: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut filled = 0usize;
    while let Some(rest) = buf.get_mut(filled..).filter(|r| !r.is_empty()) {
        let at = offset.saturating_add(u64::try_from(filled).unwrap_or(u64::MAX));
        match file.read_at(rest, at) {
            Ok(0) => break,
            Ok(n) => filled = filled.saturating_add(n),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

fn check_name(name: &str) -> StorageResult<()> {
    let invalid = |why: &str| Err(StorageError::Invalid(format!("blob name {name:?} {why}")));
    if name.is_empty() {
        return invalid("is empty");
    }
    if name.starts_with(META_DIR) {
        return invalid(&format!("is reserved (starts with {META_DIR})"));
    }
    if name.contains('\0') {
        return invalid("contains a NUL byte");
    }
    if name
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return invalid("has an empty, `.` or `..` path component");
    }
    Ok(())
}

pub(crate) fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len().saturating_mul(2));
    for b in bytes {
        for nibble in [b >> 4, b & 0x0f] {
            if let Some(&d) = DIGITS.get(usize::from(nibble)) {
                out.push(char::from(d));
            }
        }
    }
    out
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    let digits = text.as_bytes();
    if digits.len() % 2 != 0 {
        return None;
    }
    digits
        .chunks(2)
        .map(|pair| {
            let hi = char::from(*pair.first()?).to_digit(16)?;
            let lo = char::from(*pair.get(1)?).to_digit(16)?;
            u8::try_from(hi.checked_mul(16)?.checked_add(lo)?).ok()
        })
        .collect()
}

/// `base/<hex name>`, split into `+chunk/…/=last` when too long for one
/// component; the prefixes keep split names from colliding with short ones
/// and with block files.
fn keyed_path(base: &Path, name: &str) -> PathBuf {
    let hex = hex_encode(name.as_bytes());
    if hex.len() <= HEX_COMPONENT_LEN {
        return base.join(hex);
    }
    let chunks: Vec<&[u8]> = hex.as_bytes().chunks(HEX_COMPONENT_LEN).collect();
    let mut path = base.to_path_buf();
    let last = chunks.len().saturating_sub(1);
    for (n, chunk) in chunks.into_iter().enumerate() {
        let mark = if n == last { '=' } else { '+' };
        path.push(format!("{mark}{}", String::from_utf8_lossy(chunk)));
    }
    path
}

fn io_error(what: &str, path: &Path, e: &io::Error) -> StorageError {
    let message = format!("{what} {}: {e}", path.display());
    if e.raw_os_error() == Some(libc::ENAMETOOLONG) {
        return StorageError::Invalid(message);
    }
    match e.kind() {
        ErrorKind::PermissionDenied => StorageError::Forbidden(message),
        ErrorKind::Interrupted | ErrorKind::WouldBlock | ErrorKind::TimedOut => StorageError::Transient(message),
        _ => StorageError::Other(message),
    }
}

/// A path whose component is missing or is a file means the blob is absent.
fn is_absent(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory)
}

/// A modification time (as nanoseconds since the epoch) later than every one
/// handed out before by this process, and not earlier than now.
fn unique_mtime() -> SystemTime {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| u64::try_from(d.as_nanos()).ok())
        .unwrap_or(0);
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(last.saturating_add(1));
        match LAST.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => {
                return UNIX_EPOCH
                    .checked_add(Duration::from_nanos(next))
                    .unwrap_or_else(SystemTime::now)
            }
            Err(seen) => last = seen,
        }
    }
}

fn etag_of(meta: &fs::Metadata) -> ETag {
    ETag(format!(
        "\"{:x}-{:x}-{:x}-{}.{:09}-{}.{:09}\"",
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec()
    ))
}

fn properties_of(meta: &fs::Metadata) -> BlobProperties {
    let is_dir = meta.is_dir();
    BlobProperties {
        size: if is_dir { 0 } else { meta.len() },
        etag: etag_of(meta),
        last_modified: meta.modified().unwrap_or(UNIX_EPOCH),
        is_dir_marker: is_dir,
    }
}

fn check_condition(
    name: &str,
    current: Option<&fs::Metadata>,
    condition: &Condition,
    for_read: bool,
) -> StorageResult<()> {
    match (condition, current) {
        (Condition::None, _) => Ok(()),
        (Condition::IfMatch(expected), Some(meta)) if &etag_of(meta) == expected => Ok(()),
        (Condition::IfMatch(_) | Condition::IfNotExists, None) if for_read => {
            Err(StorageError::NotFound(name.to_owned()))
        }
        (Condition::IfMatch(expected), _) => Err(StorageError::PreconditionFailed(format!(
            "{name} does not have ETag {}",
            expected.0
        ))),
        (Condition::IfNotExists, None) => Ok(()),
        (Condition::IfNotExists, Some(_)) => Err(StorageError::PreconditionFailed(format!("{name} already exists"))),
    }
}

/// A committed block located in the current file.
#[derive(Clone, Debug)]
struct PlacedBlock {
    id: BlockId,
    offset: u64,
    size: u64,
}

/// A temporary file that is removed unless it was renamed into place.
struct TempFile {
    path: PathBuf,
    file: Option<File>,
}

impl TempFile {
    fn file(&mut self) -> StorageResult<&mut File> {
        self.file
            .as_mut()
            .ok_or_else(|| StorageError::Other(format!("{} closed", self.path.display())))
    }

    /// Stamps and flushes the content, then renames it to `target`.
    fn persist(mut self, target: &Path) -> StorageResult<()> {
        let file = self
            .file
            .take()
            .ok_or_else(|| StorageError::Other(format!("{} closed", self.path.display())))?;
        file.set_modified(unique_mtime())
            .map_err(|e| io_error("cannot set the time of", &self.path, &e))?;
        file.sync_all().map_err(|e| io_error("cannot flush", &self.path, &e))?;
        drop(file);
        fs::rename(&self.path, target).map_err(|e| io_error("cannot replace", target, &e))?;
        self.path = PathBuf::new();
        if let Some(parent) = target.parent() {
            // Makes the rename itself durable.
            File::open(parent)
                .and_then(|dir| dir.sync_all())
                .map_err(|e| io_error("cannot flush directory", parent, &e))?;
        }
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        self.file = None;
        if !self.path.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, ()> {
        self.write_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn blob_path(&self, name: &str) -> StorageResult<PathBuf> {
        check_name(name)?;
        Ok(self.root.join(name))
    }

    fn staged_dir(&self, name: &str) -> PathBuf {
        keyed_path(&self.staged, name)
    }

    fn blocklist_path(&self, name: &str) -> PathBuf {
        keyed_path(&self.blocklists, name)
    }

    fn temp_file(&self) -> StorageResult<TempFile> {
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let path = self.tmp.join(format!("{}-{n}", std::process::id()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| io_error("cannot create temporary file", &path, &e))?;
        Ok(TempFile { path, file: Some(file) })
    }

    /// The current state of a blob's path: `None` if absent.
    fn stat(&self, name: &str, path: &Path) -> StorageResult<Option<fs::Metadata>> {
        match fs::metadata(path) {
            Ok(meta) if meta.is_file() || meta.is_dir() => Ok(Some(meta)),
            Ok(_) => Err(StorageError::Invalid(format!(
                "{name} is neither a regular file nor a directory"
            ))),
            Err(e) if is_absent(&e) => Ok(None),
            Err(e) => Err(io_error("cannot read the metadata of", path, &e)),
        }
    }

    /// Creates the directories above blob `name`, refusing when one of them
    /// is a file.
    fn ensure_parents(&self, name: &str) -> StorageResult<()> {
        let mut dir = self.root.clone();
        let mut so_far = String::new();
        let parts: Vec<&str> = name.split('/').collect();
        let parents = parts.get(..parts.len().saturating_sub(1)).unwrap_or(&[]);
        for part in parents {
            dir.push(part);
            if !so_far.is_empty() {
                so_far.push('/');
            }
            so_far.push_str(part);
            match fs::metadata(&dir) {
                Ok(meta) if meta.is_dir() => continue,
                Ok(_) => {
                    return Err(StorageError::Conflict(format!(
                        "cannot store {name}: {so_far} is a file, not a directory"
                    )))
                }
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(io_error("cannot read the metadata of", &dir, &e)),
            }
            match fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::AlreadyExists && dir.is_dir() => {}
                Err(e) => return Err(io_error("cannot create directory", &dir, &e)),
            }
        }
        Ok(())
    }

    /// Committed blocks of a file described by `meta`, if the recorded list
    /// belongs to exactly this version of it.
    fn committed_blocks(&self, name: &str, meta: &fs::Metadata) -> Vec<PlacedBlock> {
        if !meta.is_file() {
            return Vec::new();
        }
        let path = self.blocklist_path(name);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) => {
                if !is_absent(&e) {
                    tracing::warn!("ignoring block list {}: {e}", path.display());
                }
                return Vec::new();
            }
        };
        match parse_blocklist(io::BufReader::new(file), &etag_of(meta)) {
            Ok(Some(blocks)) => blocks,
            Ok(None) => Vec::new(),
            Err(e) => {
                tracing::warn!("ignoring malformed block list {}: {e}", path.display());
                Vec::new()
            }
        }
    }

    fn write_blocklist(&self, name: &str, etag: &ETag, blocks: &[PlacedBlock]) -> StorageResult<()> {
        let path = self.blocklist_path(name);
        if blocks.is_empty() {
            return self.remove_blocklist(name);
        }
        let mut text = format!("{BLOCKLIST_HEADER}\netag {}\n", etag.0);
        for block in blocks {
            text.push_str(&format!("{} {}\n", hex_encode(&block.id.0), block.size));
        }
        let mut temp = self.temp_file()?;
        temp.file()?
            .write_all(text.as_bytes())
            .map_err(|e| io_error("cannot write", &temp.path, &e))?;
        temp.file = None;
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| io_error("cannot create", parent, &e))?;
        }
        fs::rename(&temp.path, &path).map_err(|e| io_error("cannot replace", &path, &e))?;
        temp.path = PathBuf::new();
        Ok(())
    }

    fn remove_blocklist(&self, name: &str) -> StorageResult<()> {
        let path = self.blocklist_path(name);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if is_absent(&e) => Ok(()),
            Err(e) => Err(io_error("cannot remove", &path, &e)),
        }
    }

    fn discard_staged(&self, name: &str) -> StorageResult<()> {
        let dir = self.staged_dir(name);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if is_absent(&e) => Ok(()),
            Err(e) => Err(io_error("cannot remove", &dir, &e)),
        }
    }

    /// Length of the ids already used by `name`, if any.
    fn id_len_in_use(&self, name: &str, path: &Path) -> StorageResult<Option<usize>> {
        let dir = self.staged_dir(name);
        match fs::read_dir(&dir) {
            Ok(entries) => {
                for entry in entries.flatten() {
                    if entry.file_type().map(|t| t.is_file()).unwrap_or(false) {
                        return Ok(Some(entry.file_name().len().checked_div(2).unwrap_or(0)));
                    }
                }
            }
            Err(e) if is_absent(&e) => {}
            Err(e) => return Err(io_error("cannot list", &dir, &e)),
        }
        Ok(self
            .stat(name, path)?
            .and_then(|meta| self.committed_blocks(name, &meta).first().map(|b| b.id.0.len())))
    }

    fn put_block(&self, name: &str, id: &BlockId, data: &[u8]) -> StorageResult<()> {
        let path = self.blob_path(name)?;
        super::check_block_id(id)?;
        let mut temp = self.temp_file()?;
        temp.file()?
            .write_all(data)
            .map_err(|e| io_error("cannot write", &temp.path, &e))?;
        temp.file = None;
        let _guard = self.lock();
        if let Some(len) = self.id_len_in_use(name, &path)? {
            if len != id.0.len() {
                return Err(StorageError::Invalid(format!(
                    "block id of {} bytes for {name}, whose other block ids have {len}",
                    id.0.len()
                )));
            }
        }
        let dir = self.staged_dir(name);
        fs::create_dir_all(&dir).map_err(|e| io_error("cannot create", &dir, &e))?;
        let target = dir.join(hex_encode(&id.0));
        fs::rename(&temp.path, &target).map_err(|e| io_error("cannot stage", &target, &e))?;
        temp.path = PathBuf::new();
        Ok(())
    }

    fn put_block_list(&self, name: &str, blocks: &[BlockId], condition: &Condition) -> StorageResult<ETag> {
        let path = self.blob_path(name)?;
        if blocks.len() > MAX_BLOCKS_PER_BLOB {
            return Err(StorageError::Invalid(format!(
                "{} blocks for {name}, more than {MAX_BLOCKS_PER_BLOB}",
                blocks.len()
            )));
        }
        for id in blocks {
            super::check_block_id(id)?;
        }
        if let Some(first) = blocks.first() {
            if let Some(other) = blocks.iter().find(|id| id.0.len() != first.0.len()) {
                return Err(StorageError::Invalid(format!(
                    "block ids of different lengths ({} and {}) for {name}",
                    first.0.len(),
                    other.0.len()
                )));
            }
        }
        let _guard = self.lock();
        let current = self.stat(name, &path)?;
        check_condition(name, current.as_ref(), condition, false)?;
        if current.as_ref().is_some_and(fs::Metadata::is_dir) {
            return Err(directory_conflict(name));
        }
        let committed = match &current {
            Some(meta) => self.committed_blocks(name, meta),
            None => Vec::new(),
        };
        let mut current_file = None;
        if !committed.is_empty() {
            let file = File::open(&path).map_err(|e| io_error("cannot open", &path, &e))?;
            let meta = file
                .metadata()
                .map_err(|e| io_error("cannot read the metadata of", &path, &e))?;
            // The file may have been replaced since the list was read.
            if current.as_ref().map(etag_of) == Some(etag_of(&meta)) {
                current_file = Some(file);
            }
        }

        let staged = self.staged_dir(name);
        let mut temp = self.temp_file()?;
        let mut layout = Vec::with_capacity(blocks.len());
        let mut offset = 0u64;
        for id in blocks {
            let size = self.append_block(name, id, &staged, &committed, current_file.as_ref(), temp.file()?)?;
            layout.push(PlacedBlock {
                id: id.clone(),
                offset,
                size,
            });
            offset = offset
                .checked_add(size)
                .ok_or_else(|| StorageError::Invalid(format!("{name} would be too large")))?;
        }
        self.ensure_parents(name)?;
        temp.persist(&path)?;
        let meta = fs::metadata(&path).map_err(|e| io_error("cannot read", &path, &e))?;
        let etag = etag_of(&meta);
        self.write_blocklist(name, &etag, &layout)?;
        self.discard_staged(name)?;
        Ok(etag)
    }

    /// Appends block `id` (staged first, else committed) to `out`; returns its size.
    fn append_block(
        &self,
        name: &str,
        id: &BlockId,
        staged: &Path,
        committed: &[PlacedBlock],
        current: Option<&File>,
        out: &mut File,
    ) -> StorageResult<u64> {
        let staged_path = staged.join(hex_encode(&id.0));
        match File::open(&staged_path) {
            Ok(mut block) => {
                return io::copy(&mut block, out).map_err(|e| io_error("cannot copy staged block", &staged_path, &e));
            }
            Err(e) if is_absent(&e) => {}
            Err(e) => return Err(io_error("cannot open", &staged_path, &e)),
        }
        let missing = || {
            StorageError::Invalid(format!(
                "block {} of {name} is neither staged nor committed",
                hex_encode(&id.0)
            ))
        };
        let block = committed.iter().find(|b| &b.id == id).ok_or_else(missing)?;
        let mut file = current.ok_or_else(missing)?;
        file.seek(SeekFrom::Start(block.offset))
            .map_err(|e| io_error("cannot seek in", &self.root.join(name), &e))?;
        let copied = io::copy(&mut file.take(block.size), out)
            .map_err(|e| io_error("cannot copy a committed block of", &self.root.join(name), &e))?;
        if copied != block.size {
            return Err(StorageError::Other(format!(
                "{name} is shorter than its committed block list"
            )));
        }
        Ok(copied)
    }

    fn put_blob(&self, name: &str, data: &[u8], is_dir_marker: bool, condition: &Condition) -> StorageResult<ETag> {
        let path = self.blob_path(name)?;
        if is_dir_marker && !data.is_empty() {
            return Err(StorageError::Invalid(format!("directory marker {name} must be empty")));
        }
        let mut temp = if is_dir_marker {
            None
        } else {
            let mut temp = self.temp_file()?;
            temp.file()?
                .write_all(data)
                .map_err(|e| io_error("cannot write", &temp.path, &e))?;
            Some(temp)
        };
        let _guard = self.lock();
        let current = self.stat(name, &path)?;
        check_condition(name, current.as_ref(), condition, false)?;
        match (temp.take(), &current) {
            (Some(_), Some(meta)) if meta.is_dir() => return Err(directory_conflict(name)),
            (None, Some(meta)) if meta.is_file() => {
                return Err(StorageError::Conflict(format!(
                    "cannot make {name} a directory: it is a file"
                )))
            }
            (Some(temp), _) => {
                self.ensure_parents(name)?;
                temp.persist(&path)?;
            }
            (None, _) => {
                self.ensure_parents(name)?;
                match fs::create_dir(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == ErrorKind::AlreadyExists && path.is_dir() => {}
                    Err(e) => return Err(io_error("cannot create directory", &path, &e)),
                }
                // A new ETag for every put, as for any other blob.
                File::open(&path)
                    .and_then(|dir| dir.set_modified(unique_mtime()))
                    .map_err(|e| io_error("cannot set the time of", &path, &e))?;
            }
        }
        let meta = fs::metadata(&path).map_err(|e| io_error("cannot read", &path, &e))?;
        self.remove_blocklist(name)?;
        self.discard_staged(name)?;
        Ok(etag_of(&meta))
    }

    fn delete_blob(&self, name: &str) -> StorageResult<()> {
        let path = self.blob_path(name)?;
        let _guard = self.lock();
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if is_absent(&e) => return Err(StorageError::NotFound(name.to_owned())),
            Err(e) => return Err(io_error("cannot read the metadata of", &path, &e)),
        };
        let removed = if meta.is_dir() {
            fs::remove_dir(&path)
        } else {
            fs::remove_file(&path)
        };
        match removed {
            Ok(()) => {}
            Err(e) if is_absent(&e) => return Err(StorageError::NotFound(name.to_owned())),
            Err(e) if e.kind() == ErrorKind::DirectoryNotEmpty => {
                return Err(StorageError::Conflict(format!(
                    "cannot delete directory marker {name}: the directory is not empty"
                )))
            }
            Err(e) => return Err(io_error("cannot delete", &path, &e)),
        }
        self.remove_blocklist(name)?;
        self.discard_staged(name)
    }

    fn copy_blob(&self, from: &str, to: &str) -> StorageResult<ETag> {
        let source = self.blob_path(from)?;
        self.blob_path(to)?;
        let meta = {
            let _guard = self.lock();
            self.stat(from, &source)?
        };
        match meta {
            None => Err(StorageError::NotFound(from.to_owned())),
            Some(meta) if meta.is_dir() => self.put_blob(to, &[], true, &Condition::None),
            Some(_) => {
                let target = self.blob_path(to)?;
                let mut temp = self.temp_file()?;
                let mut input = match File::open(&source) {
                    Ok(file) => file,
                    Err(e) if is_absent(&e) => return Err(StorageError::NotFound(from.to_owned())),
                    Err(e) => return Err(io_error("cannot open", &source, &e)),
                };
                io::copy(&mut input, temp.file()?).map_err(|e| io_error("cannot copy", &source, &e))?;
                let _guard = self.lock();
                if self.stat(to, &target)?.is_some_and(|m| m.is_dir()) {
                    return Err(directory_conflict(to));
                }
                self.ensure_parents(to)?;
                temp.persist(&target)?;
                let meta = fs::metadata(&target).map_err(|e| io_error("cannot read", &target, &e))?;
                self.remove_blocklist(to)?;
                self.discard_staged(to)?;
                Ok(etag_of(&meta))
            }
        }
    }

    fn get_properties(&self, name: &str) -> StorageResult<BlobProperties> {
        let path = self.blob_path(name)?;
        self.stat(name, &path)?
            .map(|meta| properties_of(&meta))
            .ok_or_else(|| StorageError::NotFound(name.to_owned()))
    }

    fn get_block_list(&self, name: &str) -> StorageResult<Vec<CommittedBlock>> {
        let path = self.blob_path(name)?;
        let meta = self
            .stat(name, &path)?
            .ok_or_else(|| StorageError::NotFound(name.to_owned()))?;
        Ok(self
            .committed_blocks(name, &meta)
            .into_iter()
            .map(|b| CommittedBlock { id: b.id, size: b.size })
            .collect())
    }

    /// Opens a blob for reading if it meets `condition`; `None` for a
    /// directory marker, which has no content. Reads through the returned
    /// file see the version that was checked, even if the blob is replaced
    /// meanwhile (commits rename a new file over the name).
    fn open_for_read(&self, name: &str, condition: &Condition) -> StorageResult<Option<(File, u64)>> {
        let path = self.blob_path(name)?;
        let file = match File::open(&path) {
            Ok(file) => Some(file),
            Err(e) if is_absent(&e) => None,
            Err(e) => return Err(io_error("cannot open", &path, &e)),
        };
        // The metadata of the open file, so that the condition is checked
        // against the very version that is read.
        let meta = file
            .as_ref()
            .map(File::metadata)
            .transpose()
            .map_err(|e| io_error("cannot read the metadata of", &path, &e))?;
        check_condition(name, meta.as_ref(), condition, true)?;
        let (Some(file), Some(meta)) = (file, meta) else {
            return Err(StorageError::NotFound(name.to_owned()));
        };
        if meta.is_dir() {
            return Ok(None);
        }
        Ok(Some((file, meta.len())))
    }

    fn list(&self, prefix: &str) -> StorageResult<Listing> {
        let dir = if prefix.is_empty() {
            self.root.clone()
        } else {
            let trimmed = prefix.strip_suffix('/').ok_or_else(|| {
                StorageError::Invalid(format!("listing prefix {prefix:?} must be empty or end with /"))
            })?;
            self.blob_path(trimmed)?
        };
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if is_absent(&e) => return Ok(Listing::default()),
            Err(e) => return Err(io_error("cannot list", &dir, &e)),
        };
        let mut listing = Listing::default();
        for entry in entries {
            let entry = entry.map_err(|e| io_error("cannot list", &dir, &e))?;
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str() else {
                tracing::warn!("skipping {}: its name is not UTF-8", entry.path().display());
                continue;
            };
            if prefix.is_empty() && file_name.starts_with(META_DIR) {
                continue;
            }
            // Follows symbolic links; a dangling one is no blob.
            let Ok(meta) = fs::metadata(entry.path()) else {
                continue;
            };
            let name = format!("{prefix}{file_name}");
            if meta.is_dir() {
                listing.prefixes.push(format!("{name}/"));
            } else if meta.is_file() {
                listing.blobs.push(ListedBlob {
                    name,
                    properties: properties_of(&meta),
                });
            }
        }
        listing.blobs.sort_by(|a, b| a.name.cmp(&b.name));
        listing.prefixes.sort();
        Ok(listing)
    }

    fn check_access(&self) -> StorageResult<()> {
        let meta =
            fs::metadata(&self.root).map_err(|e| io_error("cannot access the storage directory", &self.root, &e))?;
        if !meta.is_dir() {
            return Err(StorageError::Other(format!(
                "{} is not a directory",
                self.root.display()
            )));
        }
        fs::read_dir(&self.root).map_err(|e| io_error("cannot list the storage directory", &self.root, &e))?;
        let probe = self.temp_file()?;
        drop(probe);
        Ok(())
    }
}

fn directory_conflict(name: &str) -> StorageError {
    StorageError::Conflict(format!("cannot store {name} as a file: it is a directory"))
}

/// Decodes the text of a block-list sidecar file: the committed blocks in
/// order if the list was recorded for `etag`, `None` if it is stale. Public
/// so that the decoder can be fuzzed on its own.
pub fn decode_blocklist(text: &[u8], etag: &ETag) -> io::Result<Option<Vec<CommittedBlock>>> {
    let blocks = parse_blocklist(text, etag)?;
    Ok(blocks.map(|blocks| {
        blocks
            .into_iter()
            .map(|b| CommittedBlock { id: b.id, size: b.size })
            .collect()
    }))
}

/// The recorded list if it belongs to `etag`; `None` if it is stale.
fn parse_blocklist(reader: impl BufRead, etag: &ETag) -> io::Result<Option<Vec<PlacedBlock>>> {
    let malformed = |what: &str| io::Error::new(ErrorKind::InvalidData, what.to_owned());
    let mut lines = reader.lines();
    if lines.next().transpose()?.as_deref() != Some(BLOCKLIST_HEADER) {
        return Err(malformed("unknown header"));
    }
    let recorded = lines.next().transpose()?;
    if recorded.as_deref().and_then(|l| l.strip_prefix("etag ")) != Some(etag.0.as_str()) {
        return Ok(None);
    }
    let mut blocks = Vec::new();
    let mut offset = 0u64;
    for line in lines {
        let line = line?;
        let (id, size) = line
            .split_once(' ')
            .ok_or_else(|| malformed("block line without a size"))?;
        let id = hex_decode(id).ok_or_else(|| malformed("bad block id"))?;
        let size: u64 = size.parse().map_err(|_| malformed("bad block size"))?;
        blocks.push(PlacedBlock {
            id: BlockId(id),
            offset,
            size,
        });
        offset = offset.checked_add(size).ok_or_else(|| malformed("blocks too large"))?;
    }
    Ok(Some(blocks))
}

#[async_trait]
impl BlobStore for LocalStore {
    fn describe(&self) -> String {
        format!("local directory {}", self.inner.root.display())
    }

    async fn get_properties(&self, name: &str) -> StorageResult<BlobProperties> {
        let name = name.to_owned();
        self.blocking(move |s| s.get_properties(&name)).await
    }

    async fn get_block_list(&self, name: &str) -> StorageResult<Vec<CommittedBlock>> {
        let name = name.to_owned();
        self.blocking(move |s| s.get_block_list(&name)).await
    }

    async fn read_range(&self, name: &str, offset: u64, buf: &mut [u8], condition: &Condition) -> StorageResult<usize> {
        let owned_name = name.to_owned();
        let condition = condition.clone();
        let Some((file, len)) = self.blocking(move |s| s.open_for_read(&owned_name, &condition)).await? else {
            return Ok(0);
        };
        let file = Arc::new(file);
        let available = usize::try_from(len.saturating_sub(offset)).unwrap_or(usize::MAX);
        let want = available.min(buf.len());
        // Read in pieces: a blocking task cannot borrow `buf`, and a
        // whole-block staging copy would double the memory of every fetch.
        let mut filled = 0usize;
        while filled < want {
            let piece = want.saturating_sub(filled).min(READ_PIECE);
            let at = offset.saturating_add(u64::try_from(filled).unwrap_or(u64::MAX));
            let source = Arc::clone(&file);
            let path = self.inner.root.join(name);
            let data = self
                .blocking(move |_| read_full_at(&source, at, piece).map_err(|e| io_error("cannot read", &path, &e)))
                .await?;
            let end = filled.saturating_add(data.len());
            let dest = buf
                .get_mut(filled..end)
                .ok_or_else(|| StorageError::Other("read longer than the buffer".to_owned()))?;
            dest.copy_from_slice(&data);
            filled = end;
            if data.len() < piece {
                break;
            }
        }
        Ok(filled)
    }

    async fn put_block(&self, name: &str, id: &BlockId, data: Bytes) -> StorageResult<()> {
        let name = name.to_owned();
        let id = id.clone();
        self.blocking(move |s| s.put_block(&name, &id, &data)).await
    }

    async fn put_block_list(&self, name: &str, blocks: &[BlockId], condition: &Condition) -> StorageResult<ETag> {
        let name = name.to_owned();
        let blocks = blocks.to_vec();
        let condition = condition.clone();
        self.blocking(move |s| s.put_block_list(&name, &blocks, &condition))
            .await
    }

    async fn put_blob(
        &self,
        name: &str,
        data: Bytes,
        is_dir_marker: bool,
        condition: &Condition,
    ) -> StorageResult<ETag> {
        let name = name.to_owned();
        let condition = condition.clone();
        self.blocking(move |s| s.put_blob(&name, &data, is_dir_marker, &condition))
            .await
    }

    async fn delete_blob(&self, name: &str) -> StorageResult<()> {
        let name = name.to_owned();
        self.blocking(move |s| s.delete_blob(&name)).await
    }

    async fn list(&self, prefix: &str) -> StorageResult<Listing> {
        let prefix = prefix.to_owned();
        self.blocking(move |s| s.list(&prefix)).await
    }

    async fn copy_blob(&self, from: &str, to: &str) -> StorageResult<ETag> {
        let from = from.to_owned();
        let to = to.to_owned();
        self.blocking(move |s| s.copy_blob(&from, &to)).await
    }

    async fn check_access(&self) -> StorageResult<()> {
        self.blocking(Inner::check_access).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let bytes = [0u8, 1, 0x7f, 0x80, 0xff];
        assert_eq!(hex_encode(&bytes), "00017f80ff");
        assert_eq!(hex_decode("00017f80ff").unwrap(), bytes);
        assert_eq!(hex_decode("0"), None);
        assert_eq!(hex_decode("zz"), None);
    }

    #[test]
    fn long_names_are_split_without_collisions() {
        let base = Path::new("/b");
        let short = keyed_path(base, "a");
        assert_eq!(short, Path::new("/b/61"));
        let long = "x".repeat(150);
        let longer = "x".repeat(250);
        let p1 = keyed_path(base, &long);
        let p2 = keyed_path(base, &longer);
        assert!(p1.components().all(|c| c.as_os_str().len() <= 255));
        assert!(!p2.starts_with(&p1));
        assert_ne!(p1, p2);
    }

    #[test]
    fn unique_times_increase() {
        let a = unique_mtime();
        let b = unique_mtime();
        assert!(b > a);
    }

    #[test]
    fn stale_block_list_is_ignored() {
        let text = format!("{BLOCKLIST_HEADER}\netag \"e1\"\n6162 3\n6364 4\n");
        let blocks = parse_blocklist(text.as_bytes(), &ETag("\"e1\"".into()))
            .unwrap()
            .unwrap();
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[1].offset, 3);
        assert!(parse_blocklist(text.as_bytes(), &ETag("\"e2\"".into()))
            .unwrap()
            .is_none());
    }
}
