use super::*;
use clap::Parser;

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("blobcache").chain(args.iter().copied()))
}

#[test]
fn mount_arguments() {
    let cli = parse(&[
        "mount",
        "/mnt/x",
        "--config-file",
        "c.yaml",
        "--foreground",
        "--block-size-mb",
        "0.5",
        "--mem-size-mb",
        "64",
        "--prefetch",
        "4",
        "--parallelism",
        "8",
        "--allow-other",
        "--log-level",
        "debug",
    ])
    .unwrap();
    let Command::Mount(args) = cli.command else {
        panic!("not mount")
    };
    assert_eq!(args.mountpoint, PathBuf::from("/mnt/x"));
    assert_eq!(args.config_file, Some(PathBuf::from("c.yaml")));
    let o = args.overrides();
    assert_eq!(o.block_size_mb, Some(0.5));
    assert_eq!(o.mem_size_mb, Some(64));
    assert_eq!(o.prefetch, Some(4));
    assert_eq!(o.parallelism, Some(8));
    assert!(o.allow_other && o.foreground);
    assert_eq!(o.log_level.as_deref(), Some("debug"));
}

#[test]
fn argument_errors() {
    for bad in [
        &["mount"][..],
        &["mount", "/m", "--mem-size-mb", "lots"],
        &["mount", "/m", "--parallelism", "-3"],
        &["mount", "/m", "--no-such-flag"],
        &["unmount"],
        &["frobnicate"],
        &[],
    ] {
        let e = parse(bad).unwrap_err();
        assert_ne!(e.exit_code(), 0, "{bad:?}");
    }
    let e = parse(&["mount", "/m", "--mem-size-mb", "lots"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("lots") && e.contains("--mem-size-mb"), "{e}");
}

#[test]
fn main_reports_argument_errors_with_exit_code() {
    assert_eq!(main_with_args(["blobcache", "mount"]), 2);
}

#[test]
fn missing_mount_point_is_an_error() {
    let e = check_mount_point(Path::new("/nonexistent/blobcache-test"), false).unwrap_err();
    assert!(matches!(e, CliError::MountPointMissing(_)));
    assert!(e.to_string().contains("/nonexistent/blobcache-test"));
}

#[test]
fn mount_point_must_be_an_empty_directory() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    std::fs::write(&file, b"x").unwrap();
    let e = check_mount_point(&file, false).unwrap_err();
    assert!(matches!(e, CliError::NotADirectory(_)), "{e}");
    let e = check_mount_point(dir.path(), false).unwrap_err();
    assert!(matches!(e, CliError::NotEmpty(_)), "{e}");
    assert!(check_mount_point(dir.path(), true).is_ok());
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert_eq!(check_mount_point(&empty, false).unwrap(), empty.canonicalize().unwrap());
}

#[test]
fn unmount_of_unmounted_directory_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let e = run_unmount(&UnmountArgs {
        mountpoint: dir.path().to_path_buf(),
        lazy: false,
    })
    .unwrap_err();
    assert!(matches!(e, CliError::NotMounted(_)), "{e}");
    assert!(e.to_string().contains("is not mounted"));
}

#[test]
fn mountpoint_escaping() {
    assert_eq!(escape_mountpoint(Path::new("/mnt/x")), "mnt-x");
    assert_eq!(escape_mountpoint(Path::new("/mnt/a-b")), "mnt-a%2Db");
    assert_ne!(
        escape_mountpoint(Path::new("/mnt/a-b")),
        escape_mountpoint(Path::new("/mnt/a/b"))
    );
    assert_eq!(escape_mountpoint(Path::new("/my dir")), "my%20dir");
    assert_eq!(escape_mountpoint(Path::new("/")), "-");
}

#[test]
fn mountinfo_parsing() {
    let text = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
60 22 0:52 / /mnt/my\\040dir rw,nosuid,nodev,relatime shared:30 - fuse blobcache rw,user_id=0,group_id=0
61 22 0:53 / /mnt/y rw - tmpfs tmpfs rw
62 61 0:54 / /mnt/y rw - fuse.rclone azemu: rw
";
    let e = mountinfo::find_in(text, Path::new("/mnt/my dir")).unwrap();
    assert_eq!(e.major_minor, "0:52");
    assert_eq!(e.fstype, "fuse");
    assert_eq!(e.source, "blobcache");
    assert!(e.is_fuse());
    let top = mountinfo::find_in(text, Path::new("/mnt/y")).unwrap();
    assert_eq!(top.fstype, "fuse.rclone");
    assert!(mountinfo::find_in(text, Path::new("/mnt")).is_none());
    assert!(mountinfo::parse_line("garbage").is_none());
    assert!(!mountinfo::find_in(text, Path::new("/")).unwrap().is_fuse());
}
