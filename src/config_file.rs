//! `--config volley.toml`: every `volley serve` flag as a key, merged under the flags and
//! the environment (flag > environment > file > default), and `volley config check`'s
//! rendering of the effective configuration with secrets redacted.
//!
//! Owns the file format only: a file's values become the flags they name, appended to the
//! command line for the flags that were not given there or in the environment, and clap
//! parses the result as it parses any command line. So the file cannot drift from the
//! flags: a new flag is a new key, with the same checks in `ServeArgs::validate`.
//! Called by `main` before anything else.

use std::ffi::OsString;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};

use crate::config::Cli;

/// Largest config file read: a file with every flag is about 2 KiB.
pub const CONFIG_FILE_BYTES_MAX: u64 = 1 << 20;

/// Flags whose values are never shown (`volley config check` prints `<redacted>`).
const SECRET_KEYS: &[&str] = &["jwt_secret", "api_key"];

/// Parses the command line; with `--config FILE` (or `VOLLEY_CONFIG`), the file's keys
/// fill in what neither the command line nor the environment gave. Clap errors (and
/// `--help`) are returned as clap errors so `main` can print them clap's way.
pub fn parse(argv: Vec<OsString>) -> Result<Loaded, LoadError> {
    let matches = Cli::command()
        .try_get_matches_from(argv.clone())
        .map_err(LoadError::Clap)?;
    let Some(serve) = serve_matches(&matches) else {
        return finish(matches, Vec::new());
    };
    let Some(path) = serve.get_one::<std::path::PathBuf>("config").cloned() else {
        return finish(matches, Vec::new());
    };
    let text = read(&path).map_err(|e| {
        LoadError::Config(format!(
            "--config {}: cannot read it: {e}; give the path of a TOML file",
            path.display()
        ))
    })?;
    let (extra, from_file) = file_args(&text, serve)
        .map_err(|why| LoadError::Config(format!("--config {}: {why}", path.display())))?;
    let mut merged = argv;
    merged.extend(extra.into_iter().map(OsString::from));
    let matches = Cli::command().try_get_matches_from(merged).map_err(|e| {
        LoadError::Config(format!(
            "--config {}: {}",
            path.display(),
            e.to_string().lines().next().unwrap_or_default()
        ))
    })?;
    finish(matches, from_file)
}

/// A parsed command line with the file merged in.
pub struct Loaded {
    pub cli: Cli,
    pub matches: ArgMatches,
    /// Flag ids whose value came from the file (clap sees them as flags).
    pub from_file: Vec<String>,
}

fn finish(matches: ArgMatches, from_file: Vec<String>) -> Result<Loaded, LoadError> {
    let cli = Cli::from_arg_matches(&matches).map_err(LoadError::Clap)?;
    Ok(Loaded {
        cli,
        matches,
        from_file,
    })
}

/// Why the command line or the file cannot be used.
#[derive(Debug)]
pub enum LoadError {
    /// A command-line error: print it as clap does (`--help` and `--version` included).
    Clap(clap::Error),
    /// The config file: the path, what is wrong and what to do.
    Config(String),
}

fn read(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    let file = std::fs::File::open(path)?;
    file.take(CONFIG_FILE_BYTES_MAX + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > CONFIG_FILE_BYTES_MAX {
        return Err(std::io::Error::other(format!(
            "larger than {CONFIG_FILE_BYTES_MAX} bytes"
        )));
    }
    Ok(text)
}

/// The matches of the command that carries the server flags (`serve`, `config check`).
pub fn serve_matches(matches: &ArgMatches) -> Option<&ArgMatches> {
    match matches.subcommand() {
        Some(("serve", serve)) => Some(serve),
        Some(("config", config)) => match config.subcommand() {
            Some(("check", check)) => Some(check),
            _ => None,
        },
        _ => None,
    }
}

/// The server flags: the `serve` command's arguments, `--help` and `--config` aside.
fn serve_command() -> clap::Command {
    Cli::command()
        .find_subcommand("serve")
        .cloned()
        .unwrap_or_else(|| clap::Command::new("serve"))
}

fn settable(arg: &clap::Arg) -> bool {
    let id = arg.get_id().as_str();
    id != "config" && id != "help" && id != "version" && arg.get_long().is_some()
}

/// The command-line words a file's keys stand for, skipping keys given on the command
/// line or in the environment. Err names the key and what to do.
fn file_args(text: &str, given: &ArgMatches) -> Result<(Vec<String>, Vec<String>), String> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| format!("not valid TOML: {}", e.message()))?;
    let command = serve_command();
    let mut words = Vec::new();
    let mut from_file = Vec::new();
    for (key, value) in &table {
        let id = key.replace('-', "_");
        let Some(arg) = command
            .get_arguments()
            .find(|a| a.get_id().as_str() == id && settable(a))
        else {
            return Err(format!(
                "unknown key {key:?}; keys are `volley serve` flag names without the dashes, e.g. listen = \"127.0.0.1:8080\" (see volley serve --help)"
            ));
        };
        if matches!(
            given.value_source(&id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        from_file.push(id.clone());
        let long = format!("--{}", arg.get_long().unwrap_or(&id));
        let takes_value = arg.get_action().takes_values();
        match (value, takes_value) {
            (toml::Value::Boolean(true), false) => words.push(long),
            (toml::Value::Boolean(false), false) => {}
            (_, false) => return Err(format!("{key}: must be true or false")),
            (toml::Value::Boolean(_), true) => {
                return Err(format!("{key}: takes a value, not true or false"))
            }
            (value, true) => {
                words.push(long);
                words.push(scalar(key, value)?);
            }
        }
    }
    Ok((words, from_file))
}

fn scalar(key: &str, value: &toml::Value) -> Result<String, String> {
    Ok(match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(n) => n.to_string(),
        toml::Value::Float(x) => x.to_string(),
        toml::Value::Array(items) => items
            .iter()
            .map(|item| match item {
                toml::Value::String(s) => Ok(s.clone()),
                toml::Value::Integer(n) => Ok(n.to_string()),
                _ => Err(format!("{key}: a list holds strings or numbers")),
            })
            .collect::<Result<Vec<_>, _>>()?
            .join(","),
        _ => return Err(format!("{key}: must be a string, a number or a list")),
    })
}

/// The effective server flags as a TOML file, one `key = value  # source` per flag, with
/// secrets and Redis passwords redacted.
pub fn render(serve: &ArgMatches, from_file: &[String]) -> String {
    let mut out =
        String::from("# volley: effective configuration (flag > environment > file > default)\n");
    for arg in serve_command().get_arguments().filter(|a| settable(a)) {
        let id = arg.get_id().as_str();
        let source = match serve.value_source(id) {
            _ if from_file.iter().any(|f| f == id) => "file",
            Some(ValueSource::CommandLine) => "flag",
            Some(ValueSource::EnvVariable) => "environment",
            Some(ValueSource::DefaultValue) => "default",
            _ => "unset",
        };
        let values: Vec<String> = serve
            .get_raw(id)
            .map(|raw| raw.map(|v| v.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let shown = if !arg.get_action().takes_values() {
            serve.get_flag(id).to_string()
        } else if values.is_empty() {
            out.push_str(&format!("# {id} = (not set)\n"));
            continue;
        } else if SECRET_KEYS.contains(&id) {
            toml_str("<redacted>")
        } else if id == "redis" {
            toml_str(&redact_url(&values[0]))
        } else if arg.get_value_delimiter().is_some() {
            format!(
                "[{}]",
                values
                    .iter()
                    .map(|v| toml_str(v))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else if values[0].parse::<i64>().is_ok() {
            values[0].clone()
        } else {
            toml_str(&values[0])
        };
        out.push_str(&format!("{id} = {shown}  # {source}\n"));
    }
    out
}

fn toml_str(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

/// `redis://user:password@host` without the credentials.
fn redact_url(url: &str) -> String {
    match url.rsplit_once('@') {
        Some((scheme_auth, host)) => {
            let scheme = scheme_auth.split_once("://").map_or("", |(s, _)| s);
            format!("{scheme}://<redacted>@{host}")
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_with(file: &str, argv: &[&str]) -> Result<crate::config::ServeArgs, String> {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "volley-config-test-{}-{}.toml",
            std::process::id(),
            COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::write(&dir, file).unwrap();
        let mut full = vec!["volley", "serve", "--config", dir.to_str().unwrap()];
        full.extend_from_slice(argv);
        let out = parse(full.into_iter().map(OsString::from).collect());
        let _ = std::fs::remove_file(&dir);
        match out {
            Ok(loaded) => Ok(loaded.cli.command.serve_args()),
            Err(LoadError::Config(e)) => Err(e),
            Err(LoadError::Clap(e)) => Err(e.to_string()),
        }
    }

    fn refused(parsed: Result<crate::config::ServeArgs, String>) -> String {
        match parsed {
            Ok(_) => panic!("the file was accepted"),
            Err(e) => e,
        }
    }

    #[test]
    fn a_file_sets_flags_and_flags_win() {
        let file = "listen = \"127.0.0.1:9000\"\nbacklog = 17\nroom_events = true\nallowed-origins = [\"https://a.example\", \"https://*.b.example\"]\nmessage_fragments_max = 65536\n";
        let Ok(args) = parse_with(file, &[]) else {
            panic!("refused")
        };
        assert_eq!(args.listen, "127.0.0.1:9000");
        assert_eq!(args.backlog, 17);
        assert_eq!(args.message_fragments_max, 65_536);
        assert!(args.room_events);
        assert_eq!(
            args.allowed_origins,
            vec!["https://a.example", "https://*.b.example"]
        );
        let Ok(args) = parse_with(file, &["--backlog", "99"]) else {
            panic!("refused")
        };
        assert_eq!(args.backlog, 99, "the flag wins");
        assert_eq!(args.listen, "127.0.0.1:9000");
    }

    #[test]
    fn bad_files_name_the_key_and_the_fix() {
        let e = refused(parse_with("lisen = \"x\"\n", &[]));
        assert!(
            e.contains("unknown key \"lisen\"") && e.contains("volley serve --help"),
            "{e}"
        );
        let e = refused(parse_with("room_events = 1\n", &[]));
        assert!(e.contains("room_events: must be true or false"), "{e}");
        let e = refused(parse_with("backlog = \"many\"\n", &[]));
        assert!(e.contains("--config") && e.contains("many"), "{e}");
        let e = refused(parse_with("listen = \n", &[]));
        assert!(e.contains("not valid TOML"), "{e}");
        let e = refused(parse_with("config = \"other.toml\"\n", &[]));
        assert!(e.contains("unknown key \"config\""), "{e}");
    }

    #[test]
    fn redaction() {
        assert_eq!(redact_url("redis://:pw@h:1/2"), "redis://<redacted>@h:1/2");
        assert_eq!(redact_url("redis://h:1"), "redis://h:1");
    }
}
