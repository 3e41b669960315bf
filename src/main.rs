//! The `middleman` binary: parse the command line, run the broker.

use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let config = middleman::config::Config::parse();
    middleman::logging::init(config.log_level);
    if let Err(e) = middleman::server::run(config) {
        eprintln!("middleman: {e}");
        std::process::exit(1);
    }
}
