//! The command line: `blobcache mount` and `blobcache unmount`, logging
//! setup, the checks made before mounting, the background launcher and the
//! foreground lifecycle (mount, serve, flush and unmount on a signal).
//!
//! `mount` runs in the background by default: it starts itself again with
//! `--foreground` as a detached child whose stdout is the mount's log file
//! and whose stderr is a pipe back to the launcher. The child reports either
//! an error (printed by the launcher) or a ready line once the kernel
//! handshake is done; only then does the launcher exit with status 0.

use crate::config::{self, ConfigError, Overrides};
use crate::storage::StorageError;
use clap::{Args, Parser, Subcommand};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long storage may take to answer the access check made before mounting.
pub const CHECK_ACCESS_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the launcher waits for the background mount to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long `unmount` waits for the filesystem process to finish flushing.
pub const DAEMON_EXIT_TIMEOUT: Duration = Duration::from_secs(600);
/// fuser threads reading requests; the work itself runs on the runtime.
pub const FUSE_WORKER_THREADS: usize = 4;
/// First word of the line the background child writes when the mount is ready.
const READY_MARKER: &str = "BLOBCACHE-READY ";
const ERROR_PREFIX: &str = "blobcache: error: ";
const POLL_INTERVAL: Duration = Duration::from_millis(50);

#[derive(Debug, Parser)]
#[command(
    name = "blobcache",
    version,
    about = "Mount an Azure Blob Storage container (or a local directory) through a block cache"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mount a container at MOUNTPOINT (in the background unless --foreground).
    Mount(MountArgs),
    /// Unmount a blobcache mount and wait until its data is flushed.
    Unmount(UnmountArgs),
}

#[derive(Clone, Debug, Args)]
pub struct MountArgs {
    /// Empty directory to mount on.
    pub mountpoint: PathBuf,
    /// blobfuse2-style YAML configuration.
    #[arg(long, value_name = "FILE")]
    pub config_file: Option<PathBuf>,
    /// Mount this local directory as the container instead of Azure.
    #[arg(long, value_name = "DIR")]
    pub local_dir: Option<PathBuf>,
    /// Stay in the foreground and log to stderr; stop with Ctrl-C or SIGTERM.
    #[arg(long, short = 'f')]
    pub foreground: bool,
    /// Size of a cache block in MiB (may be fractional).
    #[arg(long, value_name = "MB")]
    pub block_size_mb: Option<f64>,
    /// Memory for cache blocks in MiB.
    #[arg(long, value_name = "MB")]
    pub mem_size_mb: Option<u64>,
    /// Blocks read ahead of a sequential reader.
    #[arg(long, value_name = "N")]
    pub prefetch: Option<u32>,
    /// Storage requests in flight at once.
    #[arg(long, value_name = "N")]
    pub parallelism: Option<u32>,
    /// Let other users access the mount.
    #[arg(long)]
    pub allow_other: bool,
    /// Allow mounting over a directory that is not empty.
    #[arg(long)]
    pub nonempty: bool,
    /// off, error, warn, info, debug, trace, or a tracing filter directive.
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Create the Azure container if it does not exist (handy with Azurite).
    #[arg(long)]
    pub create_container: bool,
    /// Set by the launcher on the background child.
    #[arg(long, hide = true)]
    pub daemon_child: bool,
}

impl MountArgs {
    pub fn overrides(&self) -> Overrides {
        Overrides {
            local_dir: self.local_dir.clone(),
            block_size_mb: self.block_size_mb,
            mem_size_mb: self.mem_size_mb,
            prefetch: self.prefetch,
            parallelism: self.parallelism,
            allow_other: self.allow_other,
            nonempty: self.nonempty,
            foreground: self.foreground,
            log_level: self.log_level.clone(),
            create_container: self.create_container,
        }
    }
}

#[derive(Clone, Debug, Args)]
pub struct UnmountArgs {
    /// Where the container is mounted.
    pub mountpoint: PathBuf,
    /// Detach now even if files are open (they keep working until closed).
    #[arg(long, short = 'z')]
    pub lazy: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("invalid log level {filter}: {message}")]
    LogFilter { filter: String, message: String },
    #[error("mount point {0} does not exist")]
    MountPointMissing(PathBuf),
    #[error("mount point {0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("mount point {0} is not empty (pass --nonempty, or nonempty: true in the config file, to mount over it)")]
    NotEmpty(PathBuf),
    #[error("{path} is already mounted ({source_name}, {fstype})")]
    AlreadyMounted {
        path: PathBuf,
        source_name: String,
        fstype: String,
    },
    #[error("{0} is a disconnected FUSE mount (its process is gone); run `blobcache unmount {0}` first")]
    StaleMount(PathBuf),
    #[error("/dev/fuse does not exist: load the fuse kernel module (modprobe fuse) or give the container access to /dev/fuse")]
    NoFuseDevice,
    #[error("this build of blobcache has no FUSE support")]
    NoFuseSupport,
    #[error("local container directory {0} does not exist")]
    LocalDirMissing(PathBuf),
    #[error("cannot use {what}: {source}")]
    Storage {
        what: String,
        #[source]
        source: StorageError,
    },
    #[error("cannot reach {what}: no answer within {} s", .timeout.as_secs())]
    StorageTimeout { what: String, timeout: Duration },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Daemon(String),
    #[error("{0} is not mounted")]
    NotMounted(PathBuf),
    #[error("{path} is not a FUSE mount ({fstype}); refusing to unmount it")]
    NotFuse { path: PathBuf, fstype: String },
    #[error("{0} is busy: a file is open or a process has its working directory inside; close them, or pass --lazy")]
    Busy(PathBuf),
    #[error("{0}")]
    Shutdown(String),
}

fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> CliError {
    let context = context.into();
    move |source| CliError::Io { context, source }
}

/// Parses the arguments, runs the command and returns the exit code,
/// printing any error. Never panics on bad input.
pub fn main_with_args<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return e.exit_code();
        }
    };
    match run(cli) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("{e}");
            report(&e);
            1
        }
    }
}

/// Writes an error to stderr, ignoring a closed stderr (the background
/// child's launcher may be gone).
fn report(error: &CliError) {
    use std::io::Write;
    let _ = writeln!(io::stderr(), "{ERROR_PREFIX}{error}");
}

pub fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Mount(args) => run_mount(args),
        Command::Unmount(args) => run_unmount(&args),
    }
}

/// Installs the global `tracing` subscriber. A second call is a no-op.
pub fn init_logging(filter: &str, to_stdout: bool) -> Result<(), CliError> {
    use std::io::IsTerminal;
    let env_filter = tracing_subscriber::EnvFilter::try_new(filter).map_err(|e| CliError::LogFilter {
        filter: filter.to_string(),
        message: e.to_string(),
    })?;
    let builder = tracing_subscriber::fmt().with_env_filter(env_filter);
    let _already_set = if to_stdout {
        builder.with_writer(io::stdout).with_ansi(false).try_init()
    } else {
        builder
            .with_writer(io::stderr)
            .with_ansi(io::stderr().is_terminal())
            .try_init()
    };
    Ok(())
}

/// Escapes a mount point into one file name: `/` becomes `-`, and bytes
/// other than letters, digits, `.` and `_` become `%XX`, so that distinct
/// paths give distinct names.
pub fn escape_mountpoint(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    let trimmed = bytes.strip_prefix(b"/").unwrap_or(bytes);
    if trimmed.is_empty() {
        return "-".to_string();
    }
    let mut out = String::with_capacity(trimmed.len());
    for &b in trimmed {
        match b {
            b'/' => out.push('-'),
            b if b.is_ascii_alphanumeric() || b == b'.' || b == b'_' => out.push(char::from(b)),
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn log_path(home: &Path, mountpoint: &Path) -> PathBuf {
    home.join("logs").join(format!("{}.log", escape_mountpoint(mountpoint)))
}

fn pid_path(home: &Path, mountpoint: &Path) -> PathBuf {
    home.join("run").join(format!("{}.pid", escape_mountpoint(mountpoint)))
}

/// Checks that `path` can be mounted on and returns its canonical form.
pub fn check_mount_point(path: &Path, nonempty: bool) -> Result<PathBuf, CliError> {
    // Looked up before any stat: a live or dead FUSE mount may not answer one.
    let target = unmount_target(path)?;
    if let Some(entry) = mountinfo::find(&target).map_err(io_error("cannot read /proc/self/mountinfo"))? {
        if entry.is_fuse() {
            return Err(CliError::AlreadyMounted {
                path: target,
                source_name: entry.source,
                fstype: entry.fstype,
            });
        }
    }
    let metadata = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(CliError::MountPointMissing(path.to_path_buf())),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => return Err(CliError::StaleMount(path.to_path_buf())),
        Err(e) => {
            return Err(CliError::Io {
                context: format!("cannot inspect mount point {}", path.display()),
                source: e,
            })
        }
    };
    if !metadata.is_dir() {
        return Err(CliError::NotADirectory(path.to_path_buf()));
    }
    let canonical = path
        .canonicalize()
        .map_err(io_error(format!("cannot resolve mount point {}", path.display())))?;
    if !nonempty {
        let mut entries = std::fs::read_dir(&canonical)
            .map_err(io_error(format!("cannot list mount point {}", canonical.display())))?;
        if entries.next().is_some() {
            return Err(CliError::NotEmpty(canonical));
        }
    }
    Ok(canonical)
}

/// Fails early with a clear message when the FUSE device is missing.
pub fn check_fuse_device() -> Result<(), CliError> {
    if Path::new("/dev/fuse").exists() {
        Ok(())
    } else {
        Err(CliError::NoFuseDevice)
    }
}

/// A local container directory must exist, except the default one, which
/// is created on first use.
// Without the Azure backend, every backend is local.
#[cfg_attr(not(feature = "azure"), allow(irrefutable_let_patterns))]
fn check_local_dir(backend: &config::Backend) -> Result<(), CliError> {
    let config::Backend::Local { path } = backend else {
        return Ok(());
    };
    if path.is_dir() {
        return Ok(());
    }
    let default = config::default_local_path(&config::process_env).ok();
    if default.as_deref() != Some(path.as_path()) {
        return Err(CliError::LocalDirMissing(path.clone()));
    }
    std::fs::create_dir_all(path).map_err(io_error(format!(
        "cannot create local container directory {}",
        path.display()
    )))
}

fn run_mount(args: MountArgs) -> Result<(), CliError> {
    let resolved = config::load(args.config_file.as_deref(), &args.overrides(), &config::process_env)?;
    if resolved.foreground || args.daemon_child {
        init_logging(&resolved.log_filter, args.daemon_child)?;
        for warning in &resolved.warnings {
            tracing::warn!("{warning}");
        }
    } else {
        // Checked here too so that a bad level fails before going to the background.
        tracing_subscriber::EnvFilter::try_new(&resolved.log_filter).map_err(|e| CliError::LogFilter {
            filter: resolved.log_filter.clone(),
            message: e.to_string(),
        })?;
        for warning in &resolved.warnings {
            eprintln!("blobcache: warning: {warning}");
        }
    }
    if args.daemon_child {
        // Leave the launcher's session so that its terminal's signals and
        // hangup do not reach the mount.
        if let Err(e) = nix::unistd::setsid() {
            tracing::warn!(error = %e, "setsid failed");
        }
    }
    let mountpoint = check_mount_point(&args.mountpoint, resolved.nonempty)?;
    check_fuse_device()?;
    check_local_dir(&resolved.backend)?;
    if resolved.foreground || args.daemon_child {
        foreground::run(resolved, &mountpoint, args.daemon_child)
    } else {
        launch_background(&args, &mountpoint)
    }
}

fn absolute(path: &Path) -> Result<PathBuf, CliError> {
    std::path::absolute(path).map_err(io_error(format!("cannot resolve {}", path.display())))
}

/// Starts the background child and waits until it reports that the mount
/// is ready, or fails.
fn launch_background(args: &MountArgs, mountpoint: &Path) -> Result<(), CliError> {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    use std::sync::mpsc;

    let home = config::blobcache_home(&config::process_env)?;
    let log = log_path(&home, mountpoint);
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).map_err(io_error(format!("cannot create log directory {}", dir.display())))?;
    }
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(io_error(format!("cannot open log file {}", log.display())))?;
    let exe = std::env::current_exe().map_err(io_error("cannot find the blobcache executable"))?;

    let mut command = Command::new(exe);
    command
        .arg("mount")
        .arg(mountpoint)
        .arg("--foreground")
        .arg("--daemon-child");
    if let Some(file) = &args.config_file {
        command.arg("--config-file").arg(absolute(file)?);
    }
    if let Some(dir) = &args.local_dir {
        command.arg("--local-dir").arg(absolute(dir)?);
    }
    if let Some(v) = args.block_size_mb {
        command.arg("--block-size-mb").arg(v.to_string());
    }
    if let Some(v) = args.mem_size_mb {
        command.arg("--mem-size-mb").arg(v.to_string());
    }
    if let Some(v) = args.prefetch {
        command.arg("--prefetch").arg(v.to_string());
    }
    if let Some(v) = args.parallelism {
        command.arg("--parallelism").arg(v.to_string());
    }
    if args.allow_other {
        command.arg("--allow-other");
    }
    if args.create_container {
        command.arg("--create-container");
    }
    if args.nonempty {
        command.arg("--nonempty");
    }
    if let Some(level) = &args.log_level {
        command.arg("--log-level").arg(level);
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::from(log_file))
        .stderr(Stdio::piped())
        .current_dir("/");
    let mut child = command
        .spawn()
        .map_err(io_error("cannot start the background mount process"))?;
    let Some(stderr) = child.stderr.take() else {
        return Err(CliError::Daemon(
            "the background mount process has no stderr pipe".to_string(),
        ));
    };

    let (lines_tx, lines_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });

    let deadline = std::time::Instant::now()
        .checked_add(READY_TIMEOUT)
        .unwrap_or_else(std::time::Instant::now);
    let mut messages = Vec::new();
    loop {
        let remaining = deadline.saturating_duration_since(std::time::Instant::now());
        match lines_rx.recv_timeout(remaining) {
            Ok(line) => match line.strip_prefix(READY_MARKER) {
                Some(description) => {
                    wait_until_mounted(mountpoint)?;
                    println!("blobcache: mounted {description} on {}", mountpoint.display());
                    return Ok(());
                }
                None => {
                    let message = line.strip_prefix(ERROR_PREFIX).unwrap_or(&line);
                    messages.push(message.to_string());
                }
            },
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child
                    .wait()
                    .map_err(io_error("cannot wait for the background mount process"))?;
                if messages.is_empty() {
                    messages.push(format!("the background mount process exited ({status})"));
                }
                messages.push(format!("(log: {})", log.display()));
                return Err(CliError::Daemon(messages.join("\n")));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(CliError::Daemon(format!(
                    "the mount did not become ready within {} s; see {}",
                    READY_TIMEOUT.as_secs(),
                    log.display()
                )));
            }
        }
    }
}

/// The child says ready after the handshake; the mount table is checked as
/// well, so that success is only reported for a mount that is really there.
fn wait_until_mounted(mountpoint: &Path) -> Result<(), CliError> {
    let tries = 100;
    for _ in 0..tries {
        let found = mountinfo::find(mountpoint).map_err(io_error("cannot read /proc/self/mountinfo"))?;
        if found.is_some_and(|entry| entry.is_fuse()) {
            return Ok(());
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    Err(CliError::Daemon(format!(
        "the background process reported ready, but {} is not in the mount table",
        mountpoint.display()
    )))
}

/// The mount point without touching a possibly disconnected mount: the
/// parent is resolved, the last component is kept as given.
fn unmount_target(path: &Path) -> Result<PathBuf, CliError> {
    let abs = absolute(path)?;
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => Ok(parent.canonicalize().map(|p| p.join(name)).unwrap_or(abs.clone())),
        _ => Ok(abs),
    }
}

fn run_unmount(args: &UnmountArgs) -> Result<(), CliError> {
    let path = unmount_target(&args.mountpoint)?;
    let entry = mountinfo::find(&path)
        .map_err(io_error("cannot read /proc/self/mountinfo"))?
        .ok_or_else(|| CliError::NotMounted(path.clone()))?;
    if !entry.is_fuse() {
        return Err(CliError::NotFuse {
            path,
            fstype: entry.fstype,
        });
    }
    let daemon = config::blobcache_home(&config::process_env)
        .ok()
        .and_then(|home| read_pid(&pid_path(&home, &path)));

    let flags = if args.lazy {
        nix::mount::MntFlags::MNT_DETACH
    } else {
        nix::mount::MntFlags::empty()
    };
    match nix::mount::umount2(&path, flags) {
        Ok(()) => {}
        Err(nix::errno::Errno::EBUSY) => return Err(CliError::Busy(path)),
        Err(nix::errno::Errno::EINVAL) => return Err(CliError::NotMounted(path)),
        Err(nix::errno::Errno::EPERM) => fusermount_unmount(&path, args.lazy)?,
        Err(e) => {
            return Err(CliError::Io {
                context: format!("cannot unmount {}", path.display()),
                source: io::Error::from(e),
            })
        }
    }
    if let Some(pid) = daemon {
        wait_for_exit(pid);
    }
    println!("blobcache: unmounted {}", path.display());
    Ok(())
}

/// Non-root users unmount through the setuid helper.
fn fusermount_unmount(path: &Path, lazy: bool) -> Result<(), CliError> {
    let mut last_error = None;
    for helper in ["fusermount3", "fusermount"] {
        let mut command = std::process::Command::new(helper);
        command.arg("-u");
        if lazy {
            command.arg("-z");
        }
        match command.arg(path).output() {
            Ok(out) if out.status.success() => return Ok(()),
            Ok(out) => {
                return Err(CliError::Daemon(format!(
                    "{helper} -u {} failed: {}",
                    path.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                )))
            }
            Err(e) => last_error = Some(e),
        }
    }
    Err(CliError::Io {
        context: format!(
            "permission denied unmounting {}, and fusermount3 is not available (install fuse3, or run as root)",
            path.display()
        ),
        source: last_error.unwrap_or_else(|| io::Error::from(io::ErrorKind::NotFound)),
    })
}

fn read_pid(path: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
    is_blobcache_process(pid).then_some(pid)
}

/// Whether `pid` is a running blobcache process (not a recycled pid).
fn is_blobcache_process(pid: u32) -> bool {
    let named = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|comm| comm.trim().starts_with("blobcache"))
        .unwrap_or(false);
    // An exited process that nobody has reaped yet counts as gone.
    let running = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let (_, after_name) = stat.rsplit_once(')')?;
            after_name.split_whitespace().next().map(str::to_string)
        })
        .is_some_and(|state| state != "Z" && state != "X");
    named && running
}

/// Waits for the filesystem process to flush and exit after an unmount, so
/// that the data is in storage when `unmount` returns.
fn wait_for_exit(pid: u32) {
    let start = std::time::Instant::now();
    let mut announced = false;
    while is_blobcache_process(pid) {
        let waited = start.elapsed();
        if waited > DAEMON_EXIT_TIMEOUT {
            eprintln!(
                "blobcache: warning: process {pid} is still flushing after {} s; not waiting any longer",
                waited.as_secs()
            );
            return;
        }
        if !announced && waited > Duration::from_secs(1) {
            eprintln!("blobcache: waiting for process {pid} to finish writing data to storage");
            announced = true;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Reading `/proc/self/mountinfo`.
pub mod mountinfo {
    use std::io;
    use std::os::unix::ffi::OsStringExt;
    use std::path::{Path, PathBuf};

    /// One line of mountinfo.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct MountEntry {
        /// `major:minor` of the device (for FUSE, the connection's bdi name).
        pub major_minor: String,
        pub mount_point: PathBuf,
        pub fstype: String,
        pub source: String,
    }

    impl MountEntry {
        pub fn is_fuse(&self) -> bool {
            self.fstype == "fuse" || self.fstype.starts_with("fuse.")
        }
    }

    /// Undoes the kernel's octal escapes (`\040` for a space, ...).
    fn unescape(field: &str) -> PathBuf {
        let bytes = field.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0usize;
        while let Some(&b) = bytes.get(i) {
            let octal = bytes
                .get(i.saturating_add(1)..i.saturating_add(4))
                .filter(|d| b == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
                .and_then(|d| std::str::from_utf8(d).ok())
                .and_then(|d| u8::from_str_radix(d, 8).ok());
            match octal {
                Some(value) => {
                    out.push(value);
                    i = i.saturating_add(4);
                }
                None => {
                    out.push(b);
                    i = i.saturating_add(1);
                }
            }
        }
        PathBuf::from(std::ffi::OsString::from_vec(out))
    }

    /// Parses one line; `None` for a malformed line.
    pub fn parse_line(line: &str) -> Option<MountEntry> {
        let mut fields = line.split(' ');
        let _id = fields.next()?;
        let _parent = fields.next()?;
        let major_minor = fields.next()?.to_string();
        let _root = fields.next()?;
        let mount_point = unescape(fields.next()?);
        // Optional fields end with a lone "-".
        fields.find(|f| *f == "-")?;
        let fstype = fields.next()?.to_string();
        let source = fields.next()?.to_string();
        Some(MountEntry {
            major_minor,
            mount_point,
            fstype,
            source,
        })
    }

    /// The topmost mount at exactly `path`, if any.
    pub fn find_in(text: &str, path: &Path) -> Option<MountEntry> {
        text.lines()
            .rev()
            .filter_map(parse_line)
            .find(|e| e.mount_point == path)
    }

    pub fn find(path: &Path) -> io::Result<Option<MountEntry>> {
        let text = std::fs::read_to_string("/proc/self/mountinfo")?;
        Ok(find_in(&text, path))
    }
}

#[cfg(feature = "fuse")]
mod foreground {
    //! Mounting in this process and serving until unmounted or signalled.

    use super::{io_error, pid_path, CliError, CHECK_ACCESS_TIMEOUT, FUSE_WORKER_THREADS};
    use crate::config::{self, Backend, ResolvedConfig};
    use crate::fuse::{self, FuseOptions, Mounted};
    use crate::shell::BlobFs;
    use crate::storage::BlobStore;
    use std::io::Write;
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    /// How long to wait for the session to end after a successful unmount.
    const SESSION_END_TIMEOUT: Duration = Duration::from_secs(30);
    const RUNTIME_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

    async fn open_store(backend: Backend, create_container: bool) -> Result<Arc<dyn BlobStore>, CliError> {
        let store: Arc<dyn BlobStore> = match backend {
            Backend::Local { path } => {
                let what = format!("local directory {}", path.display());
                let store = crate::storage::local::LocalStore::open(path)
                    .map_err(|source| CliError::Storage { what, source })?;
                Arc::new(store)
            }
            #[cfg(feature = "azure")]
            Backend::Azure(settings) => {
                let what = format!("Azure container {}/{}", settings.account, settings.container);
                let store = crate::storage::azure::AzureStore::new(settings).map_err(|source| CliError::Storage {
                    what: what.clone(),
                    source,
                })?;
                if create_container {
                    match tokio::time::timeout(CHECK_ACCESS_TIMEOUT, store.create_container()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(source)) => return Err(CliError::Storage { what, source }),
                        Err(_) => {
                            return Err(CliError::StorageTimeout {
                                what,
                                timeout: CHECK_ACCESS_TIMEOUT,
                            })
                        }
                    }
                }
                Arc::new(store)
            }
        };
        let what = store.describe();
        match tokio::time::timeout(CHECK_ACCESS_TIMEOUT, store.check_access()).await {
            Ok(Ok(())) => Ok(store),
            Ok(Err(source)) => Err(CliError::Storage { what, source }),
            Err(_) => Err(CliError::StorageTimeout {
                what,
                timeout: CHECK_ACCESS_TIMEOUT,
            }),
        }
    }

    /// Mounts, serves until unmounted or signalled, then flushes.
    pub(super) fn run(resolved: ResolvedConfig, mountpoint: &Path, daemon_child: bool) -> Result<(), CliError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("blobcache-io")
            .build()
            .map_err(io_error("cannot start the async runtime"))?;
        let result = run_on(&runtime, resolved, mountpoint, daemon_child);
        runtime.shutdown_timeout(RUNTIME_SHUTDOWN_TIMEOUT);
        result
    }

    fn run_on(
        runtime: &tokio::runtime::Runtime,
        resolved: ResolvedConfig,
        mountpoint: &Path,
        daemon_child: bool,
    ) -> Result<(), CliError> {
        let options = FuseOptions {
            attribute_timeout: resolved.attribute_timeout,
            entry_timeout: resolved.entry_timeout,
            negative_entry_timeout: resolved.negative_entry_timeout,
            allow_other: resolved.allow_other,
            read_only: resolved.read_only,
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            blksize: FuseOptions::blksize_for(resolved.cache.block_size),
            worker_threads: FUSE_WORKER_THREADS,
        };
        tracing::info!(config = ?resolved, "starting");
        let store = runtime.block_on(open_store(resolved.backend, resolved.create_container))?;
        let description = store.describe();
        let fs = BlobFs::new(store, resolved.cache).map_err(|e| CliError::Storage {
            what: description.clone(),
            source: crate::storage::StorageError::Other(e.to_string()),
        })?;
        let fs = Arc::new(fs);
        let mut mounted = fuse::mount(fs.clone(), runtime.handle().clone(), options, mountpoint)
            .map_err(io_error(format!("cannot mount on {}", mountpoint.display())))?;
        tracing::info!("mounted {description} on {}", mountpoint.display());

        let pid_file = config::blobcache_home(&config::process_env)
            .ok()
            .map(|home| pid_path(&home, &mounted.mountpoint));
        if let Some(pid_file) = &pid_file {
            let written = pid_file
                .parent()
                .map(std::fs::create_dir_all)
                .unwrap_or(Ok(()))
                .and_then(|()| std::fs::write(pid_file, format!("{}\n", std::process::id())));
            if let Err(e) = written {
                tracing::warn!(file = %pid_file.display(), error = %e, "cannot write pid file");
            }
        }

        if daemon_child {
            let mut stderr = std::io::stderr().lock();
            let _ = writeln!(stderr, "{}{description}", super::READY_MARKER);
            let _ = stderr.flush();
            drop(stderr);
            // The launcher stops reading now; later messages belong in the log.
            if let Err(e) = nix::unistd::dup2_stderr(std::io::stdout()) {
                tracing::warn!(error = %e, "cannot redirect stderr to the log file");
            }
        } else {
            println!("blobcache: mounted {description} on {}", mountpoint.display());
        }

        let outcome = runtime.block_on(serve(&fs, &mut mounted));
        if let Some(pid_file) = &pid_file {
            let _ = std::fs::remove_file(pid_file);
        }
        match outcome {
            Ok(Ended::Unmounted) => {
                mounted.join();
                tracing::info!("stopped");
                Ok(())
            }
            Ok(Ended::Detached) => {
                tracing::info!("stopped");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    enum Ended {
        /// The session is over; its thread can be joined.
        Unmounted,
        /// Lazily detached while files were open: the session lives on until
        /// they are closed, so it is not waited for.
        Detached,
    }

    enum Stop {
        Unmounted,
        Signal(&'static str),
    }

    async fn serve(fs: &BlobFs, mounted: &mut Mounted) -> Result<Ended, CliError> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut terminate = signal(SignalKind::terminate()).map_err(io_error("cannot handle SIGTERM"))?;
        let mut interrupt = signal(SignalKind::interrupt()).map_err(io_error("cannot handle SIGINT"))?;
        let mut hangup = signal(SignalKind::hangup()).map_err(io_error("cannot handle SIGHUP"))?;

        let stop = loop {
            tokio::select! {
                biased;
                result = &mut mounted.ended => {
                    match result {
                        Ok(Ok(())) => tracing::info!("unmounted"),
                        Ok(Err(e)) => tracing::error!(error = %e, "the FUSE session failed"),
                        Err(_) => tracing::error!("the FUSE session ended without a result"),
                    }
                    break Stop::Unmounted;
                }
                _ = terminate.recv() => break Stop::Signal("SIGTERM"),
                _ = interrupt.recv() => break Stop::Signal("SIGINT"),
                _ = hangup.recv() => tracing::info!("SIGHUP ignored"),
            }
        };

        let mut ended = Ended::Unmounted;
        match stop {
            Stop::Unmounted => {
                // Clears the mount if the session failed while still mounted.
                if let Err(e) = mounted.unmount() {
                    tracing::debug!(error = %e, "unmount after session end");
                }
            }
            Stop::Signal(name) => {
                tracing::info!("{name} received: unmounting");
                match mounted.unmount() {
                    Ok(()) => {
                        if tokio::time::timeout(SESSION_END_TIMEOUT, &mut mounted.ended)
                            .await
                            .is_err()
                        {
                            tracing::warn!("the FUSE session did not end after unmount");
                            ended = Ended::Detached;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot unmount; flushing, then detaching");
                        flush(fs, &mut terminate, &mut interrupt).await?;
                        if let Err(e) = nix::mount::umount2(&mounted.mountpoint, nix::mount::MntFlags::MNT_DETACH) {
                            tracing::error!(error = %e, "lazy unmount failed");
                        } else {
                            tracing::info!("detached; open files fail from now on");
                        }
                        return Ok(Ended::Detached);
                    }
                }
            }
        }
        flush(fs, &mut terminate, &mut interrupt).await?;
        Ok(ended)
    }

    /// Flushes dirty data and stops the filesystem's tasks; a second signal
    /// abandons the flush.
    async fn flush(
        fs: &BlobFs,
        terminate: &mut tokio::signal::unix::Signal,
        interrupt: &mut tokio::signal::unix::Signal,
    ) -> Result<(), CliError> {
        tracing::info!("flushing");
        tokio::select! {
            biased;
            result = fs.shutdown() => result.map_err(|e| {
                CliError::Shutdown(format!("flushing at shutdown failed: {e}"))
            }),
            _ = terminate.recv() => Err(CliError::Shutdown(
                "SIGTERM while flushing: data not yet written to storage is lost".to_string(),
            )),
            _ = interrupt.recv() => Err(CliError::Shutdown(
                "SIGINT while flushing: data not yet written to storage is lost".to_string(),
            )),
        }
    }
}

#[cfg(not(feature = "fuse"))]
mod foreground {
    use super::CliError;
    use crate::config::ResolvedConfig;
    use std::path::Path;

    pub(super) fn run(_resolved: ResolvedConfig, _mountpoint: &Path, _daemon_child: bool) -> Result<(), CliError> {
        Err(CliError::NoFuseSupport)
    }
}

#[cfg(test)]
mod tests;
