//! middleman-loadtest: the load generator bundled with middleman.
//!
//! It drives a broker (middleman, or nats-server's WebSocket listener for comparison) from
//! non-blocking connections on a few pinned threads and reports throughput, loss, order
//! violations, latency percentiles and its own CPU use. The modules split as the broker's do:
//! sans-IO protocol code (`ws`, `mm`, `nats`, `body`) that does no I/O and reads no clock, the
//! event loop (`conn`, `worker`), the scenarios (`fanout`, `reqres`, `connections`) and the
//! bookkeeping (`stats`, `report`, `run`, `summary`, `sys`).

pub mod body;
pub mod cli;
pub mod conn;
pub mod connections;
pub mod fanout;
pub mod mm;
pub mod nats;
pub mod report;
pub mod reqres;
pub mod run;
pub mod stats;
pub mod summary;
pub mod sys;
pub mod tls;
pub mod worker;
pub mod ws;

use clap::Parser;

fn summarize(input: &str) -> Result<(), String> {
    let text = if input == "-" {
        std::io::read_to_string(std::io::stdin()).map_err(|e| format!("stdin: {e}"))?
    } else {
        std::fs::read_to_string(input).map_err(|e| format!("{input}: {e}"))?
    };
    print!("{}", summary::table(&text));
    Ok(())
}

/// Parses the command line, runs the chosen scenario, and returns the process exit code.
pub fn main_with_args() -> i32 {
    let cli = cli::Cli::parse();
    if let Err(e) = sys::raise_nofile_limit() {
        eprintln!("warning: cannot raise the open-file limit: {e}");
    }
    let result = match &cli.command {
        cli::Command::Fanout(args) => fanout::run(&cli.common, args),
        cli::Command::Reqres(args) => reqres::run(&cli.common, args),
        cli::Command::Connections(args) => connections::run(&cli.common, args),
        cli::Command::Summarize(args) => summarize(&args.input),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("middleman-loadtest: {e}");
            1
        }
    }
}
