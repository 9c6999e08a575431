//! Errors the engine replies with.

use crate::types::{IoError, IoErrorKind};

/// Why a request failed. The shell maps each to one errno.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    #[error("no such file: {0}")]
    NotFound(String),
    #[error("file exists: {0}")]
    Exists(String),
    #[error("unknown or closed handle {0}")]
    BadHandle(u64),
    #[error("handle {0} is not open for writing")]
    NotWritable(u64),
    #[error("offset {offset} is past the largest size a blob can have ({max} bytes)")]
    FileTooLarge { offset: u64, max: u64 },
    #[error("{0} changed in storage while it was open")]
    Stale(String),
    #[error("access denied by storage: {0}")]
    Forbidden(String),
    #[error("timed out: {0}")]
    TimedOut(String),
    #[error("too many requests waiting ({0}); try again")]
    Busy(usize),
    #[error("an earlier write to {path} failed: {message}")]
    WriteFailed { path: String, message: String },
    #[error("storage error: {0}")]
    Storage(String),
    #[error("the cache is shutting down")]
    ShuttingDown,
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    #[error("internal inconsistency: {0}")]
    Internal(String),
}

impl EngineError {
    pub(crate) fn from_io(path: &str, error: &IoError) -> EngineError {
        match error.kind {
            IoErrorKind::NotFound => EngineError::NotFound(path.to_string()),
            IoErrorKind::PreconditionFailed => EngineError::Stale(path.to_string()),
            IoErrorKind::Forbidden => EngineError::Forbidden(error.message.clone()),
            IoErrorKind::TimedOut => EngineError::TimedOut(error.message.clone()),
            IoErrorKind::Cancelled | IoErrorKind::Failed => EngineError::Storage(format!("{path}: {}", error.message)),
        }
    }
}
