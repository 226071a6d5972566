//! The `qmtl` binary: the command line over the built-in example strategies.

fn main() -> std::process::ExitCode {
    qmtl_cli::main_with(qmtl::strategies::builtin())
}
