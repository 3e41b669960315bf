//! The `middleman` binary: read the configuration (flags, then `MIDDLEMAN_*` variables), run
//! the broker.
//!
//! Exit codes: 2 for a command line or variable that does not parse, 1 for a configuration
//! that parses but cannot work (and any other start-up failure), 0 after a drained shutdown.

use middleman::config::{self, Config};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let (config, matches) = match Config::parse_with_matches(&args) {
        Ok(parsed) => parsed,
        Err(e) if e.use_stderr() => {
            // One clear line instead of clap's block: the first line names the flag and why.
            eprintln!("middleman: {}", config::error_line(&e, &args));
            std::process::exit(2);
        }
        Err(e) => e.exit(), // --help, --version
    };
    if config.print_config {
        print!("{}", config.effective(&matches));
        return;
    }
    middleman::logging::init(config.admin.log_level, config.admin.log_format);
    if let Err(e) = middleman::server::run(config) {
        eprintln!("middleman: {e}");
        std::process::exit(1);
    }
}
