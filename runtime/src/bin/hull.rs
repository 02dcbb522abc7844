//! `hull`: the runc-compatible command line.

fn main() -> std::process::ExitCode {
    hull_runtime::cli::main()
}
