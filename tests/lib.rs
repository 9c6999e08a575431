//! End-to-end tests of the `blobcache` binary live in `tests/tests/`.
