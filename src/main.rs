//! The `volley` binary: parse flags (and `--config`), check them (`volley config check`
//! stops there), wire signals to a graceful shutdown, run the
//! shards, and turn the outcome into an exit code (0 clean, 1 runtime failure, 2 bad flags).

use std::process::ExitCode;
use std::sync::Arc;

use volley::config::Command;
use volley::config_file::{self, LoadError};
use volley::mesh::Shared;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let loaded = match config_file::parse(std::env::args_os().collect()) {
        Ok(loaded) => loaded,
        Err(LoadError::Clap(e)) => e.exit(),
        Err(LoadError::Config(e)) => {
            eprintln!("volley: {e}");
            return ExitCode::from(2);
        }
    };
    let check = matches!(loaded.cli.command, Command::Config(_));
    let args = loaded.cli.command.serve_args();
    let cpus_online = std::thread::available_parallelism().map_or(1, |n| n.get());
    let validated = args.validate(cpus_online);
    if check {
        // `volley config check`: the effective flags, then whether they are valid.
        if let Some(serve) = config_file::serve_matches(&loaded.matches) {
            print!("{}", config_file::render(serve, &loaded.from_file));
        }
        return match validated {
            Ok(config) => {
                println!("# valid: {} shards on {}", config.shards, config.listen);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("volley: invalid configuration: {e}");
                ExitCode::from(2)
            }
        };
    }
    let config = match validated {
        Ok(config) => config,
        Err(e) => {
            eprintln!("volley: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = volley::logging::init(&config.log_filter, config.log_format) {
        eprintln!("volley: {e}");
        return ExitCode::from(1);
    }
    let shared = Arc::new(Shared::new(config.max_connections));
    let flag = shared.shutdown_flag();
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second signal while shutting down exits at once.
        let registered = signal_hook::flag::register_conditional_shutdown(signal, 1, flag.clone())
            .and_then(|_| signal_hook::flag::register(signal, flag.clone()));
        if let Err(e) = registered {
            eprintln!("volley: cannot install the handler for signal {signal}: {e}");
            return ExitCode::from(1);
        }
    }
    match volley::server::serve(config, shared) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("volley: {e}");
            ExitCode::from(1)
        }
    }
}
