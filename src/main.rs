//! The `middleman` binary: parse the command line, run the broker.

use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let config = match middleman::config::Config::try_parse() {
        Ok(config) => config,
        Err(e) if e.use_stderr() => {
            // One clear line instead of clap's block: the first line names the flag and why.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid command line");
            eprintln!("middleman: {}", first.trim_start_matches("error: "));
            std::process::exit(2);
        }
        Err(e) => e.exit(), // --help, --version
    };
    if config.print_config {
        print!("{}", config.effective());
        return;
    }
    middleman::logging::init(config.log_level, config.log_format);
    if let Err(e) = middleman::server::run(config) {
        eprintln!("middleman: {e}");
        std::process::exit(1);
    }
}
