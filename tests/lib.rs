//! End-to-end tests of the `blobcache` binary live in `tests/tests/`:
//! `local.rs` and `azurite.rs` run the same user-level scenarios over the
//! local-directory backend and over Azurite, `errors.rs` checks mount
//! errors, `memory.rs` the peak memory of a mount; `tests/common/` holds the
//! helpers. They are `#[ignore]`d because they mount the real binary as root;
//! `scripts/test.sh` builds it and runs them with `--ignored`.
