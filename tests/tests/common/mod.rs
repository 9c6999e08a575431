//! Shared helpers of the end-to-end tests: where the binary is, shell
//! commands under a time limit, a watchdog per test, the `Mount` guard that
//! always unmounts, the backends a test mounts (local directory, Azurite),
//! random files and tree comparisons.
//!
//! Every external command runs under coreutils `timeout`, and every test
//! starts a [`Watchdog`], so that a hung mount fails the run instead of
//! hanging it.

// Each test crate (local, azurite, errors, memory) uses its own subset.
#![allow(dead_code)]

pub mod azure;
pub mod reported;
pub mod scenarios;

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tempfile::TempDir;

pub const MIB: u64 = 1 << 20;

/// Time limit of one shell command run by a test (copying 100 MiB included).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);
/// Time limit of `blobcache mount` until it reports the mount ready.
pub const MOUNT_TIMEOUT: Duration = Duration::from_secs(120);
/// Time limit of `blobcache unmount`, which flushes what is still dirty.
pub const UNMOUNT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the blobcache process may linger after its unmount returned.
pub const EXIT_AFTER_UNMOUNT: Duration = Duration::from_secs(60);

const HOW_TO_RUN: &str = "The end-to-end tests mount the real binary and need root and /dev/fuse. \
Run them with `scripts/test.sh`, or by hand: \
`cargo build --release -p blobcache-mount && \
BLOBCACHE_BIN=${CARGO_TARGET_DIR:-target}/release/blobcache cargo test -p e2e -- --ignored --test-threads=1` \
(Azurite tests also need `scripts/azurite.sh start` and \
BLOBCACHE_AZURITE_ENDPOINT=http://127.0.0.1:10000/devstoreaccount1).";

/// The binary under test, from `BLOBCACHE_BIN`.
pub fn blobcache_bin() -> PathBuf {
    match std::env::var_os("BLOBCACHE_BIN") {
        Some(path) if !path.is_empty() => {
            let path = PathBuf::from(path);
            assert!(
                path.is_file(),
                "BLOBCACHE_BIN={} is not a file. {HOW_TO_RUN}",
                path.display()
            );
            path
        }
        _ => panic!("BLOBCACHE_BIN is not set. {HOW_TO_RUN}"),
    }
}

/// Where tests put mount points and scratch files. `scripts/test.sh` sets
/// `BLOBCACHE_E2E_TMP` so that its exit trap can unmount leftovers under it.
pub fn scratch_root() -> PathBuf {
    match std::env::var_os("BLOBCACHE_E2E_TMP") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => std::env::temp_dir(),
    }
}

pub fn scratch_dir(prefix: &str) -> TempDir {
    let root = scratch_root();
    fs::create_dir_all(&root).expect("create the scratch root");
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(&root)
        .expect("create a scratch directory")
}

/// Mount points currently mounted by this process, for the watchdog to
/// detach before it ends a hung test.
static LIVE_MOUNTS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn live_mounts() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    LIVE_MOUNTS.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Ends the whole test process if the test that holds it runs past its
/// limit: a test thread stuck in a system call on a hung FUSE mount cannot be
/// interrupted any other way.
pub struct Watchdog {
    disarm: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

pub fn watchdog(test: &str, limit: Duration) -> Watchdog {
    // Every test starts here: fail before generating any data if the binary is missing.
    blobcache_bin();
    let (tx, rx) = mpsc::channel::<()>();
    let test = test.to_owned();
    let thread = std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
            eprintln!(
                "WATCHDOG: test `{test}` ran longer than {}s; detaching its mounts and \
                 exiting so that the run does not hang",
                limit.as_secs()
            );
            for mount in live_mounts().iter() {
                let pids = blobcache_pids(mount);
                force_unmount(mount);
                for pid in pids {
                    let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
                }
            }
            std::process::exit(2);
        }
    });
    Watchdog {
        disarm: Some(tx),
        thread: Some(thread),
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // Dropping the sender wakes the thread with `Disconnected`.
        self.disarm.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Result of a command: status, output and how long it took.
pub struct Run {
    pub output: Output,
    pub elapsed: Duration,
}

impl Run {
    pub fn success(&self) -> bool {
        self.output.status.success()
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
    /// Whether coreutils `timeout` ended the command.
    pub fn timed_out(&self) -> bool {
        matches!(self.output.status.code(), Some(124) | Some(137))
    }
    pub fn describe(&self) -> String {
        let timeout_note = if self.timed_out() {
            " (TIMED OUT: the mount may be hung)"
        } else {
            ""
        };
        format!(
            "{}{timeout_note} after {:.1}s\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.output.status,
            self.elapsed.as_secs_f64(),
            self.stdout().trim_end(),
            self.stderr().trim_end()
        )
    }
}

/// Runs `program args` under `timeout` (SIGTERM at `limit`, SIGKILL 10 s
/// later). Output goes to files, not pipes: a daemon that keeps the inherited
/// descriptors open must not make the test wait for it.
pub fn run_limited<I, S>(limit: Duration, program: &OsStr, args: I, env: &[(&str, &OsStr)]) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let stdout = tempfile::tempfile().expect("a file for stdout");
    let stderr = tempfile::tempfile().expect("a file for stderr");
    let mut command = Command::new("timeout");
    command
        .arg("-k")
        .arg("10")
        .arg(limit.as_secs().to_string())
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(stdout.try_clone().expect("clone the stdout file"))
        .stderr(stderr.try_clone().expect("clone the stderr file"));
    for (name, value) in env {
        command.env(name, value);
    }
    let started = Instant::now();
    let status = command
        .status()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.to_string_lossy()));
    let elapsed = started.elapsed();
    Run {
        output: Output {
            status,
            stdout: read_back(stdout),
            stderr: read_back(stderr),
        },
        elapsed,
    }
}

fn read_back(mut file: fs::File) -> Vec<u8> {
    let mut bytes = Vec::new();
    let _ = file.seek(SeekFrom::Start(0));
    let _ = file.read_to_end(&mut bytes);
    bytes
}

/// Runs a bash script (`set -euo pipefail`) with the given environment,
/// without judging the result.
pub fn try_sh(script: &str, env: &[(&str, &OsStr)]) -> Run {
    run_limited(
        COMMAND_TIMEOUT,
        OsStr::new("bash"),
        ["-euo", "pipefail", "-c", script],
        env,
    )
}

/// Runs a bash script and returns its stdout; fails the test if it fails.
/// Paths are passed as environment variables so that no quoting is needed.
pub fn sh(script: &str, env: &[(&str, &OsStr)]) -> String {
    let run = try_sh(script, env);
    assert!(run.success(), "shell command failed:\n{script}\n{}", run.describe());
    run.stdout()
}

/// Runs the binary under test with a time limit.
pub fn run_blobcache<I, S>(limit: Duration, args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_limited(limit, blobcache_bin().as_os_str(), args, &[])
}

/// Whether `path` is a mount point, from the kernel's mount table.
pub fn is_mounted(path: &Path) -> bool {
    let table = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let wanted = escape_mountinfo(path);
    table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .any(|mount_point| mount_point == wanted)
}

/// mountinfo writes space, tab, newline and backslash as octal escapes.
fn escape_mountinfo(path: &Path) -> String {
    let mut escaped = String::new();
    for &byte in path.as_os_str().as_bytes() {
        match byte {
            b' ' | b'\t' | b'\n' | b'\\' => escaped.push_str(&format!("\\{byte:03o}")),
            _ => escaped.push(char::from(byte)),
        }
    }
    escaped
}

/// Last resort when `blobcache unmount` did not work: lazy unmounts.
fn force_unmount(path: &Path) {
    for (program, args) in [("umount", ["-l"]), ("fusermount3", ["-uz"])] {
        if !is_mounted(path) {
            return;
        }
        let _ = run_limited(
            Duration::from_secs(30),
            OsStr::new(program),
            [OsStr::new(args[0]), path.as_os_str()],
            &[],
        );
    }
}

/// Pids of blobcache processes serving `mount_point`: a process whose
/// executable is named `blobcache*` and whose arguments name the mount point.
pub fn blobcache_pids(mount_point: &Path) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let dir = entry.path();
        let is_blobcache = fs::read_link(dir.join("exe"))
            .ok()
            .and_then(|exe| exe.file_name().map(|n| n.as_bytes().starts_with(b"blobcache")))
            .unwrap_or(false);
        if !is_blobcache {
            continue;
        }
        let cmdline = fs::read(dir.join("cmdline")).unwrap_or_default();
        let names_mount = cmdline
            .split(|&b| b == 0)
            .any(|arg| Path::new(OsStr::from_bytes(arg)) == mount_point);
        if names_mount {
            pids.push(pid);
        }
    }
    pids
}

/// Peak resident set size (`VmHWM`) of a process, in bytes.
pub fn peak_rss_bytes(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// A mounted blobcache. Unmounts on drop, whatever happened in the test.
pub struct Mount {
    mount_point: PathBuf,
    args: Vec<OsString>,
    mounted: bool,
    // Dropped after the unmount in `Drop::drop`; kept (not deleted) if the
    // unmount failed, so that no recursive delete walks into a live mount.
    dir: Option<TempDir>,
    // Config files referenced by `args`.
    _config: Option<TempDir>,
}

impl Mount {
    /// Mounts with `blobcache mount MOUNTPOINT args...` on a fresh mount point.
    pub fn new(args: Vec<OsString>, config: Option<TempDir>) -> Mount {
        let dir = scratch_dir("mnt-");
        let mut mount = Mount {
            mount_point: dir.path().to_path_buf(),
            args,
            mounted: false,
            dir: Some(dir),
            _config: config,
        };
        mount.mount();
        mount
    }

    pub fn path(&self) -> &Path {
        &self.mount_point
    }

    pub fn mount(&mut self) {
        assert!(!self.mounted, "already mounted");
        let mut args = vec![OsString::from("mount"), self.mount_point.clone().into()];
        args.extend(self.args.iter().cloned());
        let run = run_blobcache(MOUNT_TIMEOUT, &args);
        if !run.success() {
            force_unmount(&self.mount_point);
            panic!("`blobcache {}` failed: {}", join_args(&args), run.describe());
        }
        eprintln!("mounted: {}", run.stdout().trim_end());
        assert!(
            is_mounted(&self.mount_point),
            "`blobcache mount` returned 0 but {} is not a mount point\n{}",
            self.mount_point.display(),
            run.describe()
        );
        self.mounted = true;
        live_mounts().push(self.mount_point.clone());
    }

    /// Unmounts and checks that the blobcache process is gone afterwards, so
    /// that everything written has been flushed before the next mount.
    pub fn unmount(&mut self) {
        assert!(self.mounted, "not mounted");
        let pids = blobcache_pids(&self.mount_point);
        let run = run_blobcache(UNMOUNT_TIMEOUT, [OsStr::new("unmount"), self.mount_point.as_os_str()]);
        let still_mounted = is_mounted(&self.mount_point);
        if still_mounted {
            force_unmount(&self.mount_point);
        }
        self.forget_live();
        assert!(
            run.success() && !still_mounted,
            "`blobcache unmount {}` did not unmount: {}",
            self.mount_point.display(),
            run.describe()
        );
        let deadline = Instant::now() + EXIT_AFTER_UNMOUNT;
        while pids.iter().any(|pid| process_alive(*pid)) {
            assert!(
                Instant::now() < deadline,
                "blobcache process(es) {pids:?} still running {}s after unmount",
                EXIT_AFTER_UNMOUNT.as_secs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn remount(&mut self) {
        self.unmount();
        self.mount();
    }

    /// The pid of the process serving this mount.
    pub fn pid(&self) -> u32 {
        let pids = blobcache_pids(&self.mount_point);
        match pids.as_slice() {
            [pid] => *pid,
            [] => panic!(
                "no blobcache process found whose arguments name {}",
                self.mount_point.display()
            ),
            // A supervisor and a worker: the newest one serves the mount.
            many => *many.iter().max().expect("non-empty"),
        }
    }

    fn forget_live(&mut self) {
        self.mounted = false;
        live_mounts().retain(|p| p != &self.mount_point);
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.mounted {
            let run = run_blobcache(UNMOUNT_TIMEOUT, [OsStr::new("unmount"), self.mount_point.as_os_str()]);
            if !run.success() || is_mounted(&self.mount_point) {
                eprintln!(
                    "cleanup: `blobcache unmount {}` did not unmount ({}); detaching lazily",
                    self.mount_point.display(),
                    run.describe()
                );
                force_unmount(&self.mount_point);
            }
            self.forget_live();
        }
        if is_mounted(&self.mount_point) {
            eprintln!(
                "cleanup: {} is still mounted; leaving the directory in place",
                self.mount_point.display()
            );
            if let Some(dir) = self.dir.take() {
                let _ = dir.keep();
            }
        }
        // After a failed test or unmount, a lingering server would hold
        // memory and the mount point for the rest of the run: give it a
        // moment to finish its shutdown, then end it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !blobcache_pids(&self.mount_point).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        for pid in blobcache_pids(&self.mount_point) {
            eprintln!("cleanup: killing blobcache pid {pid}, still running after unmount");
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        }
    }
}

fn process_alive(pid: u32) -> bool {
    // A zombie has no memory map left but still has a /proc entry.
    fs::read_to_string(format!("/proc/{pid}/status"))
        .map(|s| !s.lines().any(|l| l.starts_with("State:") && l.contains('Z')))
        .unwrap_or(false)
}

fn join_args(args: &[OsString]) -> String {
    args.iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// How long `blobcache mount` may take to report a configuration or
/// connection error: a user should not wait minutes to learn of a typo.
pub const ERROR_TIME_LIMIT: Duration = Duration::from_secs(60);

/// An endpoint where nothing listens.
pub const UNREACHABLE: &str = "http://127.0.0.1:1/devstoreaccount1";

/// Runs `blobcache mount MOUNTPOINT args...` expecting it to fail within
/// [`ERROR_TIME_LIMIT`] with a message containing one of `any_of`
/// (case-insensitive), without mounting and without printing the key.
pub fn expect_mount_error(args: &[OsString], any_of: &[&str], what: &str) {
    let mount_point = scratch_dir("mnt-err-");
    let mut full = vec![OsString::from("mount"), mount_point.path().into()];
    full.extend(args.iter().cloned());
    let run = run_blobcache(ERROR_TIME_LIMIT * 2, &full);
    eprintln!("{what}: {}", run.describe());
    let pids = blobcache_pids(mount_point.path());
    let mounted = is_mounted(mount_point.path());
    if mounted {
        force_unmount(mount_point.path());
    }
    for pid in pids {
        let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
    }
    assert!(!run.timed_out(), "{what}: `blobcache mount` hung");
    assert!(!run.success(), "{what}: `blobcache mount` succeeded");
    assert!(!mounted, "{what}: `blobcache mount` failed but left a mount");
    assert!(
        run.elapsed <= ERROR_TIME_LIMIT,
        "{what}: the error took {:.1}s (limit {}s)",
        run.elapsed.as_secs_f64(),
        ERROR_TIME_LIMIT.as_secs()
    );
    let message = format!("{}{}", run.stdout(), run.stderr()).to_lowercase();
    assert!(
        any_of.iter().any(|word| message.contains(&word.to_lowercase())),
        "{what}: the message mentions none of {any_of:?}"
    );
    // Secrets are never printed; a slice of the key catches altered keys too.
    let key_part = azure::ACCOUNT_KEY.get(8..40).unwrap_or(azure::ACCOUNT_KEY);
    assert!(
        !message.contains(&key_part.to_lowercase()),
        "{what}: the message contains the account key"
    );
}

/// Cache settings a test mounts with.
#[derive(Clone, Copy, Debug)]
pub struct CacheConfig {
    pub block_size_mb: u64,
    pub mem_size_mb: u64,
    pub prefetch: u32,
    pub parallelism: u32,
}

impl CacheConfig {
    /// Small blocks keep the block-boundary cases quick to produce.
    pub const SMALL: CacheConfig = CacheConfig {
        block_size_mb: 1,
        mem_size_mb: 64,
        prefetch: 4,
        parallelism: 8,
    };
    /// Eight buffers of one block: writing or reading 100 MiB must evict.
    pub const PRESSURE: CacheConfig = CacheConfig {
        block_size_mb: 1,
        mem_size_mb: 8,
        prefetch: 4,
        parallelism: 8,
    };

    pub fn block_size(&self) -> u64 {
        self.block_size_mb * MIB
    }

    pub fn yaml(&self) -> String {
        format!(
            "block_cache:\n  block-size-mb: {}\n  mem-size-mb: {}\n  prefetch: {}\n  parallelism: {}\n",
            self.block_size_mb, self.mem_size_mb, self.prefetch, self.parallelism
        )
    }
}

/// What a mount serves.
pub enum Backend {
    /// The embedded default: a container kept in a local directory.
    Local { dir: TempDir },
    /// A container in Azurite, reached with the well-known dev account.
    Azurite(Box<azure::Azurite>),
}

impl Backend {
    pub fn local() -> Backend {
        Backend::Local {
            dir: scratch_dir("container-"),
        }
    }

    /// A fresh, empty container in Azurite (unique per test).
    pub fn azurite(label: &str) -> Backend {
        Backend::Azurite(Box::new(azure::Azurite::new_container(label)))
    }

    pub fn name(&self) -> &'static str {
        match self {
            Backend::Local { .. } => "local",
            Backend::Azurite(_) => "azurite",
        }
    }

    pub fn azurite_client(&self) -> &azure::Azurite {
        match self {
            Backend::Azurite(az) => az,
            Backend::Local { .. } => panic!("this test needs the Azurite backend"),
        }
    }

    /// Mounts this backend. The local backend is configured with command-line
    /// flags and the Azurite one with a blobfuse2-style config file, so that
    /// both ways of configuring are exercised.
    pub fn mount(&self, cache: &CacheConfig) -> Mount {
        self.mount_with(cache, "")
    }

    /// Mounts with `extra_yaml` (more config sections, e.g. `libfuse:`)
    /// added to the config. The local backend then also gets a config file.
    pub fn mount_with(&self, cache: &CacheConfig, extra_yaml: &str) -> Mount {
        match self {
            Backend::Local { dir } if !extra_yaml.is_empty() => {
                let (config_dir, config_file) = write_config(&format!("{}{extra_yaml}", cache.yaml()));
                let args = vec![
                    OsString::from("--local-dir"),
                    dir.path().into(),
                    "--config-file".into(),
                    config_file.into(),
                ];
                Mount::new(args, Some(config_dir))
            }
            Backend::Local { dir } => {
                let args = vec![
                    OsString::from("--local-dir"),
                    dir.path().into(),
                    "--block-size-mb".into(),
                    cache.block_size_mb.to_string().into(),
                    "--mem-size-mb".into(),
                    cache.mem_size_mb.to_string().into(),
                    "--prefetch".into(),
                    cache.prefetch.to_string().into(),
                    "--parallelism".into(),
                    cache.parallelism.to_string().into(),
                ];
                Mount::new(args, None)
            }
            Backend::Azurite(az) => {
                let yaml = format!("{}{extra_yaml}{}", cache.yaml(), az.azstorage_yaml(azure::ACCOUNT_KEY));
                let (config_dir, config_file) = write_config(&yaml);
                Mount::new(vec!["--config-file".into(), config_file.into()], Some(config_dir))
            }
        }
    }
}

/// Writes a config file into a fresh scratch directory.
pub fn write_config(yaml: &str) -> (TempDir, PathBuf) {
    let dir = scratch_dir("config-");
    let path = dir.path().join("config.yaml");
    fs::write(&path, yaml).expect("write the config file");
    (dir, path)
}

/// A seed for random file contents, printed so that a failure can be
/// reproduced with `BLOBCACHE_E2E_SEED`.
pub fn seed() -> u64 {
    let seed = std::env::var("BLOBCACHE_E2E_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("random contents from BLOBCACHE_E2E_SEED={seed}");
    seed
}

/// splitmix64: fast, good enough to make every block of every file distinct.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

/// Writes `size` random bytes to `path`, creating parent directories.
pub fn write_random_file(path: &Path, size: u64, rng: &mut Rng) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("create parent directories");
    }
    let mut file = std::io::BufWriter::new(fs::File::create(path).expect("create a source file"));
    let mut left = size;
    while left > 0 {
        let chunk = left.min(MIB);
        file.write_all(&rng.bytes(chunk as usize)).expect("write a source file");
        left -= chunk;
    }
    file.flush().expect("flush a source file");
}

/// One entry of a tree listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    Dir,
    File { size: u64, md5: String },
}

/// Every entry below `root` (relative paths), with sizes and md5 of files,
/// computed with `find` and `md5sum` through whatever filesystem holds it.
pub fn tree(root: &Path) -> BTreeMap<String, Entry> {
    let listing = sh(
        r#"cd "$ROOT" && find . -mindepth 1 -printf '%y %s %P\n'"#,
        &[("ROOT", root.as_os_str())],
    );
    let sums = sh(
        r#"cd "$ROOT" && find . -type f -print0 | sort -z | xargs -0 -r md5sum"#,
        &[("ROOT", root.as_os_str())],
    );
    let md5s: BTreeMap<String, String> = sums
        .lines()
        .filter_map(|line| {
            let (sum, path) = line.split_once("  ")?;
            Some((path.trim_start_matches("./").to_owned(), sum.to_owned()))
        })
        .collect();
    let mut entries = BTreeMap::new();
    for line in listing.lines() {
        let mut parts = line.splitn(3, ' ');
        let (Some(kind), Some(size), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            panic!("unexpected find output: {line:?}");
        };
        let entry = match kind {
            "d" => Entry::Dir,
            "f" => Entry::File {
                size: size.parse().expect("a size from find"),
                md5: md5s.get(path).cloned().unwrap_or_default(),
            },
            other => panic!("unexpected file type {other:?} of {path}"),
        };
        entries.insert(path.to_owned(), entry);
    }
    entries
}

/// Fails the test, with a readable difference, if the two trees differ in
/// names, kinds, sizes or md5 of any file.
pub fn assert_same_tree(expected: &Path, actual: &Path, context: &str) {
    let want = tree(expected);
    let got = tree(actual);
    if want == got {
        eprintln!("{context}: {} entries identical", want.len());
        return;
    }
    let mut report = String::new();
    for (path, entry) in &want {
        match got.get(path) {
            None => report.push_str(&format!("  missing: {path} ({entry:?})\n")),
            Some(other) if other != entry => {
                report.push_str(&format!("  differs: {path}: want {entry:?}, got {other:?}\n"))
            }
            Some(_) => {}
        }
    }
    for (path, entry) in &got {
        if !want.contains_key(path) {
            report.push_str(&format!("  unexpected: {path} ({entry:?})\n"));
        }
    }
    panic!(
        "{context}: {} differs from {}:\n{report}",
        actual.display(),
        expected.display()
    );
}

/// Names and sizes of the files directly in `dir`, as `ls -l` shows them.
pub fn ls_sizes(dir: &Path) -> BTreeMap<String, u64> {
    let out = sh(
        r#"LC_ALL=C ls -lA --time-style=+%s "$DIR""#,
        &[("DIR", dir.as_os_str())],
    );
    out.lines()
        .filter(|line| line.starts_with('-'))
        .filter_map(|line| {
            // mode links owner group size time name; test names have no spaces.
            let fields: Vec<&str> = line.split_whitespace().collect();
            let size = fields.get(4)?.parse().ok()?;
            let name = fields.get(6..)?.join(" ");
            Some((name, size))
        })
        .collect()
}
