//! [`LoadError`]: why a plugin file is not loaded (at start, on a hot reload, or by `herald plugin check`),
//! naming the file and the step that refused it.

use std::path::PathBuf;

use super::runtime::Failure;

/// Why a plugin was not loaded. The wasmtime reasons are its error chain on one bounded line, so the log
/// line and `/api/plugins` stay readable whatever a broken file makes the compiler say.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The plugin runtime cannot start (`herald plugin check` only; the server starts it once).
    #[error("cannot start the plugin runtime: {0:#}")]
    Runtime(anyhow::Error),
    /// The `.wasm` file cannot be read.
    #[error("cannot read {}: {error}", .path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// What the system says.
        error: std::io::Error,
    },
    /// The plugin's configuration file (`<name>.toml` beside it, or `--config`) cannot be read.
    #[error("cannot read the plugin configuration {}: {error}", .path.display())]
    ConfigUnreadable {
        /// The configuration file.
        path: PathBuf,
        /// What the system says.
        error: std::io::Error,
    },
    /// The plugin's configuration file is not TOML.
    #[error("plugin configuration {} is not valid TOML{}: {}", .path.display(), at_line(*.line), .error.message())]
    ConfigNotToml {
        /// The configuration file.
        path: PathBuf,
        /// The line of the problem, from 1, when the parser says where it is.
        line: Option<usize>,
        /// What the TOML parser says (boxed: it is large, and every `Result` of a load would be as large).
        error: Box<toml::de::Error>,
    },
    /// The configuration file's table cannot be written as the JSON `init` receives (serde's conversion
    /// can fail in general; a parsed TOML table always converts).
    #[error("plugin configuration {} cannot be passed on as JSON: {error}", .path.display())]
    ConfigNotJson {
        /// The configuration file.
        path: PathBuf,
        /// What serde says.
        error: serde_json::Error,
    },
    /// The compiler's thread ended without an answer (it panicked, or the runtime is shutting down).
    #[error("compilation aborted: {0}")]
    CompilationAborted(tokio::task::JoinError),
    /// The bytes are not a WebAssembly component (garbage, a core module, a truncated file).
    #[error("not a valid component: {0}")]
    NotAComponent(String),
    /// The component imports something the host does not provide.
    #[error("does not fit the plugin contract: {0}")]
    Unlinkable(String),
    /// The component does not export the plugin interface.
    #[error("does not export the plugin contract: {0}")]
    NoContract(String),
    /// The first instance, made to read the metadata, cannot be created.
    #[error("instantiation failed: {0}")]
    Instantiation(String),
    /// The plugin's `metadata` call failed.
    #[error("metadata failed: {0}")]
    Metadata(String),
    /// The first configured instance did not start: its `init` refused the configuration (`init refused:
    /// …`, the plugin's own words), failed, or the instance could not be created.
    #[error("{}", .0.message)]
    FirstInstance(Failure),
}

/// ` at line N` when the line is known.
fn at_line(line: Option<usize>) -> String {
    line.map(|line| format!(" at line {line}"))
        .unwrap_or_default()
}
