//! Logging setup (temporary: stderr only, until the full implementation lands).
#![allow(missing_docs)]
use crate::config::Level;
use std::path::PathBuf;

pub struct LogSettings {
    pub foreground: bool,
    pub verbosity: i8,
    pub write: bool,
    pub error_level: Level,
    pub error_path: PathBuf,
    pub access_path: PathBuf,
    pub program: &'static str,
}

#[derive(Debug, thiserror::Error)]
#[error("log")]
pub struct LogError;

pub fn init(settings: &LogSettings) -> Result<(), LogError> {
    use tracing_subscriber::EnvFilter;
    let level = match settings.verbosity {
        i8::MIN..=-1 => "error",
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .try_init();
    Ok(())
}
