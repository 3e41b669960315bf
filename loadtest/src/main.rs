//! The `middleman-loadtest` binary; everything is in the library.

fn main() {
    std::process::exit(middleman_loadtest::main_with_args());
}
