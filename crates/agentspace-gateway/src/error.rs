//! Errors of setting up the gateway. Errors on a request path never surface as these:
//! they become an HTTP error or a deny for that request only.

use std::path::PathBuf;

/// Why the gateway could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A file or directory of the gateway's state could not be read or written.
    #[error(
        "cannot {action} `{path}`: {source}; check that the state directory is writable by this user"
    )]
    State {
        /// What was being done (`create`, `read`, `write`).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A certificate could not be generated or a stored CA key could not be loaded.
    #[error("cannot {action}: {detail}")]
    Certificate {
        /// What was being done.
        action: String,
        /// The underlying error.
        detail: String,
    },
    /// An operator-given upstream CA file is unusable.
    #[error(
        "upstream CA file `{path}`: {detail}; give a PEM file with at least one CERTIFICATE block"
    )]
    UpstreamCa {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// A `--resolve` entry is malformed.
    #[error(
        "resolve override `{entry}`: {detail}; write HOST:PORT:ADDR or HOST:PORT:ADDR:ADDR_PORT, e.g. `api.example.com:443:127.0.0.1`"
    )]
    Resolve {
        /// The entry as given.
        entry: String,
        /// What is wrong with it.
        detail: String,
    },
    /// A gateway config file is malformed.
    #[error(
        "invalid gateway config `{}`{}: field `{field}`: {message}",
        path.display(),
        location(*line, *column)
    )]
    ConfigFile {
        /// The file.
        path: PathBuf,
        /// 1-based line, when known.
        line: Option<usize>,
        /// 1-based column, when known.
        column: Option<usize>,
        /// The field path (`limits.connectTimeout`).
        field: String,
        /// What is wrong and what is expected.
        message: String,
    },
    /// The TLS configuration could not be built.
    #[error("cannot configure TLS: {0}")]
    Tls(String),
}

/// ` at line L column C`, as far as known.
fn location(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(" at line {l} column {c}"),
        (Some(l), None) => format!(" at line {l}"),
        _ => String::new(),
    }
}
