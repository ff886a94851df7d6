//! Why a sandbox-layer operation failed: one variant per cause a front end may answer
//! differently, with the sentence a client reads as its `Display`. An engine error is carried
//! as it is. Nothing here knows HTTP: each front end maps these to its own statuses and
//! bodies (the native API's table is `http::error`).

use codebox::Language;

/// A failure of the sandbox layer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SandboxError {
    /// No live sandbox with that id (or token) belongs to the caller.
    #[error("sandbox not found")]
    SandboxNotFound,
    /// The sandbox has no context with that id.
    #[error("context not found")]
    ContextNotFound,
    /// The language is not one the engine runs; `name` is clipped.
    #[error("unknown language {name:?}; this server runs: {}", Language::list())]
    UnknownLanguage { name: String },
    /// No template has that name; `name` is clipped.
    #[error(
        "there is no template named {name:?}; built-in: {}, {}",
        codebox::STDLIB_TEMPLATE,
        codebox::DATA_TEMPLATE
    )]
    UnknownTemplate { name: String },
    /// A sandbox lifetime out of range.
    #[error("timeout must be between 1 and {max_secs} seconds")]
    InvalidLifetime { max_secs: u64 },
    /// An execution timeout out of range.
    #[error("timeout must be more than 0 and at most {max_secs} seconds")]
    InvalidTimeout { max_secs: u64 },
    /// A request the layer refuses before anything runs; the sentence says why.
    #[error("{0}")]
    InvalidInput(String),
    /// A process command that is not one of the emulated interpreters; `command` is clipped.
    #[error("cannot run {command:?}: the commands available are {}", commands())]
    UnknownCommand { command: String },
    /// The server runs its maximum number of sandboxes.
    #[error("the server already runs its maximum of {max} sandboxes; kill one or try later")]
    TooManySandboxes { max: usize },
    /// The sandbox has its maximum number of contexts.
    #[error("a sandbox may have at most {max} contexts")]
    TooManyContexts { max: usize },
    /// Live contexts have reserved the whole memory budget.
    #[error("the server's memory budget is taken by live contexts; kill a sandbox or try later")]
    MemoryBudget,
    /// An upload went past the server's upload limit.
    #[error("the upload is larger than the {limit}-byte limit")]
    UploadTooLarge { limit: u64 },
    /// The sandbox was killed while the code ran.
    #[error(
        "the sandbox was killed while the code ran (by a request, its lifetime, or server \
         shutdown)"
    )]
    Killed,
    /// The engine refused or failed.
    #[error(transparent)]
    Engine(#[from] codebox::Error),
    /// A failure of the server itself (a temporary directory, a worker thread).
    #[error("{0}")]
    Internal(String),
}

/// `python or python3 with -c CODE or a script path; node with -e CODE or a script path`: the
/// commands of every language that has some.
pub(crate) fn commands() -> String {
    Language::ALL
        .into_iter()
        .filter(|l| !l.commands().is_empty())
        .map(|l| {
            format!(
                "{} with {} CODE or a script path",
                l.commands().join(" or "),
                l.inline_flag()
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}
