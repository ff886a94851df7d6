//! The crate's error type: failures of the host side (setup, capacity, bad input, files).
//!
//! Failures of the guest's code (exceptions, timeouts, running out of fuel or memory) are not
//! errors of the API call: they come back inside [`Execution`](crate::Execution) with the
//! output produced so far, see [`ExecutionError`](crate::ExecutionError).

use std::io;
use std::path::{Path, PathBuf};

/// What went wrong on the host side.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The runtime is not installed in the runtimes directory.
    #[error(
        "the {runtime} runtime is not installed in {dir}; run `codebox runtimes install` \
         (or point CODEBOX_RUNTIMES_DIR at an installed copy)"
    )]
    RuntimeMissing {
        /// Runtime name and version, e.g. `python-0.1.0`.
        runtime: String,
        /// Where it was looked for.
        dir: PathBuf,
    },

    /// A runtime file failed verification (truncated, edited or the wrong version).
    #[error(
        "{path} is corrupt: {reason}; it was not used. Run `codebox runtimes install` to \
         replace it"
    )]
    RuntimeCorrupt {
        /// The file or directory that failed.
        path: PathBuf,
        /// Why it failed.
        reason: String,
    },

    /// Downloading or installing a runtime failed.
    #[error("runtime installation failed: {message}")]
    Install {
        /// What failed and what to do about it.
        message: String,
    },

    /// The engine already runs its maximum number of contexts.
    #[error("too many live contexts (the limit is {limit}); close one or raise max_contexts")]
    TooManyContexts {
        /// The configured maximum.
        limit: usize,
    },

    /// An argument was rejected before anything ran.
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// A path given to the file API is not acceptable (escapes the home directory, contains NUL,
    /// too long, ...).
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath {
        /// The path as given.
        path: String,
        /// Why it was refused.
        reason: &'static str,
    },

    /// The file or directory does not exist.
    #[error("no such file or directory: {0}")]
    NotFound(String),

    /// Writing would take the context's writable directories over their disk quota.
    #[error("disk quota exceeded: writing {path} would use more than {quota_bytes} bytes")]
    DiskQuota {
        /// The path being written.
        path: String,
        /// The configured quota.
        quota_bytes: u64,
    },

    /// No template has this name: it is neither built in (`stdlib`, `data`) nor stored.
    #[error(
        "there is no template named {name:?}; build it first (`codebox template build`) or use \
         \"data\" or \"stdlib\""
    )]
    UnknownTemplate {
        /// The name asked for.
        name: String,
    },

    /// A template could not be built or used: its setup failed or it failed the build gate.
    /// Nothing is stored for a template that failed.
    #[error("template {name:?}: {message}")]
    Template {
        /// The template's name.
        name: String,
        /// What failed; for a failing setup script, its traceback.
        message: String,
    },

    /// An I/O error on a host path.
    #[error("{path}: {source}")]
    Io {
        /// The host path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// An unexpected failure inside the engine.
    #[error("internal error: {message}")]
    Internal {
        /// What failed, followed by the cause's text when there is a cause.
        message: String,
        /// The error that caused it, when there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl Error {
    pub(crate) fn io(path: &Path, source: io::Error) -> Error {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// An internal error without an underlying cause.
    pub(crate) fn internal(message: impl Into<String>) -> Error {
        Error::Internal {
            message: message.into(),
            source: None,
        }
    }

    /// An internal error: `what` failed because of `source`, which is kept.
    pub(crate) fn internal_from(
        what: &str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Error {
        let source = source.into();
        let mut message = format!("{what}: {source}");
        let mut cause = source.source();
        while let Some(next) = cause {
            message.push_str(&format!(": {next}"));
            cause = next.source();
        }
        Error::Internal {
            message,
            source: Some(source),
        }
    }

    /// A step of a template build failed; the template's name is filled in by
    /// [`Error::for_template`] where the build starts.
    pub(crate) fn template_step(message: impl Into<String>) -> Error {
        Error::Template {
            name: String::new(),
            message: message.into(),
        }
    }

    /// Names the template of a failed build step.
    pub(crate) fn for_template(self, name: &str) -> Error {
        match self {
            Error::Template { message, .. } => Error::Template {
                name: name.into(),
                message,
            },
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_internal_error_keeps_its_source_and_says_it() {
        let io = io::Error::new(io::ErrorKind::PermissionDenied, "no access");
        let error = Error::internal_from("opening the cache", io);
        assert_eq!(
            error.to_string(),
            "internal error: opening the cache: no access"
        );
        let source = std::error::Error::source(&error).expect("the source is kept");
        let io = source
            .downcast_ref::<io::Error>()
            .expect("as the io::Error it was");
        assert_eq!(io.kind(), io::ErrorKind::PermissionDenied);
        assert!(std::error::Error::source(&Error::internal("plain")).is_none());
    }
}
