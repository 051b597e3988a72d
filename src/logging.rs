//! Where log lines go: one `tracing` subscriber on stderr, installed once by `main`, with a
//! timestamp, a level, the `shard` field when a shard logs, and the message; as text or as
//! one JSON object per line (`--log-format json`) for log shippers.
//!
//! Owns the filter rules: `--log-level` (or `VOLLEY_LOG_LEVEL`) wins, then `RUST_LOG`,
//! then `info`. Call sites use the `log!` macro (lib.rs); this module knows none of them.

use std::fmt;

use tracing_subscriber::EnvFilter;

/// What is logged when neither `--log-level` nor `RUST_LOG` says: every state change
/// (start, links up and down, shutdown), never a line per message.
pub const LOG_LEVEL_DEFAULT: &str = "info";

/// The shape of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `2025-01-02T03:04:05.678901Z  INFO volley: message shard=0`
    Text,
    /// `{"timestamp":"...","level":"INFO","message":"...","shard":0,"target":"volley"}`
    Json,
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// The filter directives in force: `flag` (from `--log-level` or `VOLLEY_LOG_LEVEL`), else
/// `RUST_LOG`, else [`LOG_LEVEL_DEFAULT`]. Err says what is wrong with the directives.
pub fn directives(flag: Option<&str>, rust_log: Option<&str>) -> Result<String, String> {
    let (from, text) = match (flag, rust_log) {
        (Some(flag), _) => ("--log-level", flag),
        (None, Some(env)) if !env.trim().is_empty() => ("RUST_LOG", env),
        _ => return Ok(LOG_LEVEL_DEFAULT.to_string()),
    };
    let fix = "use error, warn, info, debug, trace or off, or directives like volley=debug";
    // A bare word is a level; EnvFilter would take a misspelt one for a target name and
    // log nothing, which is worse than refusing it.
    let levels = ["error", "warn", "info", "debug", "trace", "off"];
    if !text.contains('=') && !levels.iter().any(|l| l.eq_ignore_ascii_case(text.trim())) {
        return Err(format!("{from} {text}: not a level; {fix}"));
    }
    EnvFilter::builder()
        .parse(text)
        .map(|_| text.to_string())
        .map_err(|e| format!("{from} {text}: {e}; {fix}"))
}

/// Installs the subscriber. Err when one is already installed (a test harness).
pub fn init(directives: &str, format: LogFormat) -> Result<(), String> {
    let filter = EnvFilter::builder()
        .parse(directives)
        .map_err(|e| format!("log filter {directives}: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    installed.map_err(|e| format!("cannot install the logger: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_wins_over_rust_log_which_wins_over_the_default() {
        assert_eq!(directives(None, None).unwrap(), "info");
        assert_eq!(directives(None, Some("")).unwrap(), "info");
        assert_eq!(directives(None, Some("debug")).unwrap(), "debug");
        assert_eq!(directives(Some("warn"), Some("debug")).unwrap(), "warn");
        assert_eq!(
            directives(Some("volley=debug"), None).unwrap(),
            "volley=debug"
        );
    }

    #[test]
    fn bad_directives_name_the_source_and_the_fix() {
        let e = directives(Some("loud!"), None).unwrap_err();
        assert!(
            e.starts_with("--log-level loud!") && e.contains("warn"),
            "{e}"
        );
        let e = directives(None, Some("volley=loud")).unwrap_err();
        assert!(e.starts_with("RUST_LOG"), "{e}");
    }
}
