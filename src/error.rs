//! The library's one error type: every message names the file, line, field or tensor at fault.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{}: {err}", path.display())]
    Io { path: PathBuf, err: std::io::Error },
    /// A line of a text file (JSONL, ...) is malformed or lacks a field.
    #[error("{}:{line}: {msg}", path.display())]
    Line { path: PathBuf, line: usize, msg: String },
    /// A whole file is wrong (bad config, missing tensor, wrong shape, ...).
    #[error("{}: {msg}", path.display())]
    File { path: PathBuf, msg: String },
    /// A bad argument or an inconsistent state not tied to one file.
    #[error("{0}")]
    Invalid(String),
    /// A rollout engine (an OpenAI-compatible server) failed or could not be reached.
    #[error("rollout engine {url}: {msg}")]
    Engine { url: String, msg: String },
    /// A reward verifier (a command or an HTTP service) failed, hung or answered nonsense.
    #[error("reward {what}: {msg}")]
    Reward { what: String, msg: String },
    /// The user asked to stop (Ctrl-C); what was due has been written.
    #[error("interrupted")]
    Interrupted,
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, err: std::io::Error) -> Self {
        Error::Io { path: path.into(), err }
    }
    pub fn file(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::File { path: path.into(), msg: msg.into() }
    }
    pub fn engine(url: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Engine { url: url.into(), msg: msg.into() }
    }
    pub fn reward(what: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Reward { what: what.into(), msg: msg.into() }
    }
    pub fn line(path: impl Into<PathBuf>, line: usize, msg: impl Into<String>) -> Self {
        Error::Line { path: path.into(), line, msg: msg.into() }
    }
}
