//! The error type shared by every stage. Each variant carries the file, key or
//! record concerned; [`Error::is_user_error`] separates bad input from bugs so the
//! binary can choose the exit code.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O failure on a named path.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Bad configuration: every problem found, each with its key path.
    #[error("invalid configuration{}:\n{}", file.as_ref().map(|f| format!(" in {}", f.display())).unwrap_or_default(), problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Config {
        file: Option<PathBuf>,
        problems: Vec<String>,
    },
    /// Bad input data: a record, file or column the user supplied.
    #[error("{location}: {message}")]
    Input {
        location: String,
        message: String,
        hint: Option<String>,
    },
    /// An artifact on disk that is damaged, foreign or of another version.
    #[error("{}: {message}", path.display())]
    Artifact {
        path: PathBuf,
        message: String,
        hint: Option<String>,
    },
    /// A precondition such as a missing upstream stage.
    #[error("{message}")]
    Usage {
        message: String,
        hint: Option<String>,
    },
    /// A bug or an environment failure that is not the user's input.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
    pub fn input(location: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Input {
            location: location.into(),
            message: message.into(),
            hint: None,
        }
    }
    pub fn artifact(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Artifact {
            path: path.into(),
            message: message.into(),
            hint: None,
        }
    }
    pub fn usage(message: impl Into<String>) -> Self {
        Self::Usage {
            message: message.into(),
            hint: None,
        }
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::Internal(message.into())
    }
    /// Attach a `hint:` line shown after the error.
    #[must_use]
    pub fn with_hint(mut self, h: impl Into<String>) -> Self {
        match &mut self {
            Self::Input { hint, .. } | Self::Artifact { hint, .. } | Self::Usage { hint, .. } => {
                *hint = Some(h.into());
            }
            _ => {}
        }
        self
    }
    pub fn hint(&self) -> Option<&str> {
        match self {
            Self::Input { hint, .. } | Self::Artifact { hint, .. } | Self::Usage { hint, .. } => {
                hint.as_deref()
            }
            Self::Config { .. } => {
                Some("run `gnno validate` after editing; docs/CONFIG.md lists every key")
            }
            Self::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                Some("check the path in pipeline.toml")
            }
            Self::Io { source, .. }
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::StorageFull
                        | std::io::ErrorKind::QuotaExceeded
                        | std::io::ErrorKind::FileTooLarge
                ) =>
            {
                Some(
                    "free space where the workdir is (or raise the limit), then run again: \
                     the stage resumes, and the last published output is intact",
                )
            }
            _ => None,
        }
    }
    /// True when the user can fix the cause (input, config, artifacts, usage).
    pub fn is_user_error(&self) -> bool {
        match self {
            Self::Config { .. }
            | Self::Input { .. }
            | Self::Artifact { .. }
            | Self::Usage { .. } => true,
            Self::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
            ),
            Self::Internal(_) => false,
        }
    }
}

/// An error of the Parquet writer on `path`: an I/O error as one (a full disk gets
/// its hint), anything else as internal.
pub fn parquet_write(path: impl Into<PathBuf>, e: parquet::errors::ParquetError) -> Error {
    let path = path.into();
    match e {
        parquet::errors::ParquetError::External(inner) => {
            match inner.downcast::<std::io::Error>() {
                Ok(io) => Error::io(path, *io),
                Err(other) => Error::internal(format!("writing {}: {other}", path.display())),
            }
        }
        other => Error::internal(format!("writing {}: {other}", path.display())),
    }
}

/// Extension to name the path of any I/O error.
pub trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
