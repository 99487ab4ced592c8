//! The `ipivirt` binary: a thin shell around [`ipivirt::cli`].
fn main() -> std::process::ExitCode {
    ipivirt::cli::main()
}
