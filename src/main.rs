//! The `corecast` command: `start` serves, `config` prints the effective configuration,
//! `bench` measures a server, `plan` sizes a deployment from those measurements.

mod bench;
mod plan;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use corecast::config::Config;
use corecast::config::report::Report;

const ENVIRONMENT: &str = "\
Configuration: built-in defaults, then the --config file (Soketi's dotted keys, or the same \
keys nested), then environment variables: Soketi's SOKETI_* names, and CORECAST_* for options \
Soketi lacks. An unknown key or variable, or a malformed value, stops with an error naming it.

Every SOKETI_* and CORECAST_* variable, with its config-file key, is listed by `corecast config` \
(with the effective value and its source), in src/config/env.rs and in the README's \
\"Configure it\" section.";

/// A Pusher Channels (protocol 7) WebSocket server, a drop-in replacement for Soketi.
/// With the `count-alloc` feature every heap allocation is counted
/// (`corecast_heap_allocations_total`), for allocations per delivery in `corecast bench`.
#[cfg(feature = "count-alloc")]
#[global_allocator]
static GLOBAL: corecast::perf::alloc::Counting = corecast::perf::alloc::Counting;

#[derive(Debug, Parser)]
#[command(
    name = "corecast",
    version = env!("BUILD_LONG_VERSION"),
    arg_required_else_help = true,
    args_override_self = true,
    after_help = ENVIRONMENT
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the server
    ///
    /// Serves WebSocket (/app/{key}) and the REST API (/apps/{id}/...) on
    /// SOKETI_HOST:SOKETI_PORT (0.0.0.0:6001 by default), one shard per core, until SIGTERM or
    /// SIGINT, then shuts down gracefully within SOKETI_SHUTDOWN_GRACE_PERIOD. An invalid
    /// configuration stops it with exit code 2 and a message naming the option.
    #[command(after_help = ENVIRONMENT)]
    Start(ConfigFile),
    /// Print the effective configuration and where each value came from
    ///
    /// Loads the configuration exactly as `start` does (defaults, then the --config file, then
    /// the environment) and prints one line per option: the variable, the config-file key, the
    /// effective value, its source (default, file or env), and a note on options corecast
    /// accepts but ignores. Then the apps: id, key, secret and source. Passwords and secrets
    /// are shown as ****. An invalid configuration fails as `start` does, with exit code 2.
    #[command(after_help = ENVIRONMENT)]
    Config {
        #[command(flatten)]
        file: ConfigFile,
        /// Print JSON instead of the aligned table.
        #[arg(long)]
        json: bool,
    },
    /// Measure a corecast, one it starts or a running one: fan-out, client events, connections, memory, cross-node (see `corecast bench --help`)
    ///
    /// Starts this binary as the server (or drives an existing one with --target), runs one
    /// scenario and prints the figures: the server's CPU per delivery, latency percentiles,
    /// losses, and with --system-counts syscalls, io_uring submissions, allocations and
    /// bytes written per delivery. --json prints one JSON object for machines; --sweep
    /// steps the rate up to the highest one held within --p99-ms; --profile writes the
    /// figures `corecast plan` sizes a deployment from.
    #[command(disable_help_flag = true)]
    Bench {
        /// The options of `corecast bench --help`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Size a deployment: cores, memory and nodes for a target load
    ///
    /// From a profile written by `corecast bench --profile FILE` (figures measured on your
    /// hardware), or without one from the figures in tuning/profile.json, it prints the
    /// nodes, cores and memory needed for --connections and --deliveries-per-sec, the
    /// headroom and every figure it assumed, and which resource binds first.
    Plan(plan::PlanArgs),
}

#[derive(Debug, Args)]
struct ConfigFile {
    /// JSON config file with Soketi's keys, e.g. {"port": 6001, "appManager.array.apps":
    /// [...]}; --config=FILE and --config FILE both work. Environment variables override it
    #[arg(long, value_name = "FILE")]
    config: Option<String>,
}

impl ConfigFile {
    /// The words `Config::from_process_env` reads.
    fn args(&self) -> Vec<String> {
        self.config
            .iter()
            .map(|path| format!("--config={path}"))
            .collect()
    }

    fn load(&self) -> Result<Config, ExitCode> {
        Config::from_process_env(&self.args()).map_err(|e| {
            eprintln!("corecast: configuration error: {e}");
            ExitCode::from(2)
        })
    }
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Start(file) => start(&file),
        Command::Config { file, json } => print_config(&file, json),
        Command::Bench { args } => bench::main(args),
        Command::Plan(args) => plan::run(&args),
    }
}

fn start(file: &ConfigFile) -> ExitCode {
    let config = match file.load() {
        Ok(c) => c,
        Err(code) => return code,
    };
    // Shards inherit this mask, so SIGTERM and SIGINT reach only the sigwait below.
    let signals = corecast::signals::block_termination();
    match corecast::server::start(config) {
        Ok(server) => {
            match server.addr {
                Some(addr) => eprintln!("corecast: listening on {addr}"),
                None => eprintln!("corecast: worker: sending queued webhooks"),
            }
            let signal = corecast::signals::wait(&signals);
            eprintln!("corecast: {signal}: stopping");
            server.shutdown();
            server.join();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("corecast: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print_config(file: &ConfigFile, json: bool) -> ExitCode {
    let config = match file.load() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let report = match Report::build(&file.args(), &config, &|name| std::env::var(name).ok()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("corecast: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    if json {
        println!("{:#}", report.json());
    } else {
        print!("{}", report.table());
    }
    ExitCode::SUCCESS
}
