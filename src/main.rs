//! `corecast start [--config=FILE]`: read the configuration, start the shards, serve.

use std::process::ExitCode;

use corecast::config::Config;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rest = match args.first().map(String::as_str) {
        Some("start") => &args[1..],
        Some("--help" | "-h" | "help") => {
            println!("usage: corecast start [--config=FILE.json]");
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprintln!(
                "corecast: unknown command {other:?}; usage: corecast start [--config=FILE.json]"
            );
            return ExitCode::from(2);
        }
        None => {
            eprintln!("usage: corecast start [--config=FILE.json]");
            return ExitCode::from(2);
        }
    };
    let config = match Config::from_process_env(rest) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("corecast: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    // Shards inherit this mask, so SIGTERM and SIGINT reach only the sigwait below.
    let signals = corecast::signals::block_termination();
    match corecast::server::start(config) {
        Ok(server) => {
            eprintln!("corecast: listening on {}", server.addr);
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
