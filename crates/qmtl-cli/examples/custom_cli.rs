//! A `qmtl` binary of your own: the built-in strategies plus one more, with the whole
//! command line (`run`, `nodes`, `dag`, `strategies`) for free.
//!
//! `cargo run -p qmtl-cli --example custom_cli -- strategies`

use qmtl::strategies::{builtin, MomentumStrategy};

fn main() -> std::process::ExitCode {
    let registry = builtin().with("momentum_fast", "5/20-bar moving-average momentum", || {
        MomentumStrategy { fast: 5, slow: 20 }
    });
    qmtl_cli::main_with(registry)
}
