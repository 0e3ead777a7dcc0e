//! The sink's own error, returned through `for-each-batch` as `sink-error`.
//!
//! It is kept apart from traps (a panic, an exceeded limit), which the host
//! detects and reports itself. Either way nothing staged is committed.

use crate::__private::WitSinkError;
use crate::StageError;

/// Why a sink rejected a batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// The batch's records are malformed for this sink. Retrying the same
    /// records with the same sink cannot succeed, so the host does not retry.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// Any other failure.
    #[error("sink failed: {0}")]
    Failed(String),
}

impl SinkError {
    /// The records are malformed for this sink; say which record and why.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::InvalidInput(message.into())
    }

    /// Any other failure.
    pub fn failed(message: impl Into<String>) -> Self {
        Self::Failed(message.into())
    }

    /// The message, without the kind.
    pub fn message(&self) -> &str {
        match self {
            Self::InvalidInput(m) | Self::Failed(m) => m,
        }
    }

    pub(crate) fn into_wit(self) -> WitSinkError {
        match self {
            Self::InvalidInput(m) => WitSinkError::InvalidInput(m),
            Self::Failed(m) => WitSinkError::Failed(m),
        }
    }
}

impl From<StageError> for SinkError {
    fn from(e: StageError) -> Self {
        Self::failed(format!("staging output: {e}"))
    }
}

impl From<std::io::Error> for SinkError {
    fn from(e: std::io::Error) -> Self {
        Self::failed(format!("I/O: {e}"))
    }
}
