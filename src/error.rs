//! The library's one error type. Every fallible public function returns [`Result`]; nothing in
//! the library panics on bad input (corrupt packs, wrong shapes, bad labels), so the CLI can exit
//! with a one-line reason and the wasm boundary can turn it into a `JsError`.

use std::fmt;

/// A typed error. `Display` gives the one-line reason shown to users.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A GGUF pack is malformed: bad magic, truncated, an offset or size out of range, ...
    #[error("invalid GGUF pack: {0}")]
    Gguf(String),
    /// A tensor type this crate does not read or write.
    #[error("unsupported tensor type {0}")]
    UnsupportedType(String),
    /// A checkpoint or pack does not hold the tensors the architecture needs.
    #[error("{}", KeyMismatch::describe(missing, unexpected))]
    Keys {
        missing: Vec<String>,
        unexpected: Vec<String>,
    },
    /// A tensor has a shape the architecture cannot use.
    #[error("tensor {name}: expected shape {expected:?}, found {found:?}")]
    Shape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// The architecture cannot be inferred or is inconsistent.
    #[error("architecture: {0}")]
    Architecture(String),
    /// An argument out of range: a class label, a timestep, a grid size, a sampler setting.
    #[error("{0}")]
    InvalidArgument(String),
    /// A checkpoint file could not be read (pickle, safetensors).
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: String, reason: String },
    /// WebGPU: no adapter, a device error, a limit exceeded.
    #[error("GPU: {0}")]
    Gpu(String),
    /// The GPU device was lost (driver reset, tab in the background, out of memory): the
    /// engine must be created again. The text says why, as the browser or driver reported it.
    #[error("{0}")]
    DeviceLost(String),
    /// A run was stopped on request (the sampler's step callback said stop).
    #[error("cancelled")]
    Cancelled,
    /// An error from the candle tensor library (should not happen on valid inputs).
    #[error("tensor op: {0}")]
    Candle(#[from] candle_core::Error),
}

struct KeyMismatch;
impl KeyMismatch {
    fn describe(missing: &[String], unexpected: &[String]) -> String {
        fn list(v: &[String]) -> String {
            const SHOW: usize = 12;
            let mut s = v.iter().take(SHOW).cloned().collect::<Vec<_>>().join(", ");
            if v.len() > SHOW {
                s.push_str(&format!(", ... ({} more)", v.len() - SHOW));
            }
            s
        }
        let mut parts = Vec::new();
        if !missing.is_empty() {
            parts.push(format!("missing keys ({}): {}", missing.len(), list(missing)));
        }
        if !unexpected.is_empty() {
            parts.push(format!("unexpected keys ({}): {}", unexpected.len(), list(unexpected)));
        }
        format!("checkpoint does not match the architecture: {}", parts.join("; "))
    }
}

impl Error {
    /// The kind of error as one snake_case word (what the page's error handler switches on).
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Io { .. } => "io",
            Error::Gguf(_) => "gguf",
            Error::UnsupportedType(_) => "unsupported_type",
            Error::Keys { .. } => "keys",
            Error::Shape { .. } => "shape",
            Error::Architecture(_) => "architecture",
            Error::InvalidArgument(_) => "invalid_argument",
            Error::Checkpoint { .. } => "checkpoint",
            Error::Gpu(_) => "gpu",
            Error::DeviceLost(_) => "device_lost",
            Error::Cancelled => "cancelled",
            Error::Candle(_) => "tensor",
        }
    }

    /// A GPU error with `context` in front; a device loss stays a device loss.
    pub(crate) fn gpu_context(self, context: impl fmt::Display) -> Self {
        match self {
            e @ (Error::DeviceLost(_) | Error::Cancelled) => e,
            e => Error::Gpu(format!("{context}: {e}")),
        }
    }

    pub(crate) fn io(path: impl fmt::Display, source: std::io::Error) -> Self {
        Error::Io { path: path.to_string(), source }
    }
    pub(crate) fn gguf(msg: impl Into<String>) -> Self {
        Error::Gguf(msg.into())
    }
    pub(crate) fn arg(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }
    pub(crate) fn arch(msg: impl Into<String>) -> Self {
        Error::Architecture(msg.into())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
