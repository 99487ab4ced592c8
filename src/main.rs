//! The `ipivirt` binary: a thin shell around [`ipivirt::cli`].

/// An allocation failure exits 6 with a message instead of aborting.
#[global_allocator]
static ALLOCATOR: ipivirt::oom::ExitOnOom = ipivirt::oom::ExitOnOom;

fn main() -> std::process::ExitCode {
    ipivirt::cli::main()
}
