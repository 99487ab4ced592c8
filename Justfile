# ipivirt recipes. `cargo install just --locked` if `just` is missing.

# The main job on the default scenario.
run *ARGS:
    cargo run --release -- {{ARGS}}

# Boot N vCPUs and print the online line.
boot N="4":
    cargo run --release -- boot --vcpus {{N}}

# The test suite (boots real VMs on /dev/kvm).
test:
    cargo test

# Criterion benches (`just bench boot -- --quick` for a short run).
bench *ARGS:
    cargo bench {{ARGS}}

# Formatting, clippy (host crates and the guest) and rustdoc, warnings denied.
lint:
    cargo fmt --all -- --check
    cargo clippy --all-targets -- -D warnings
    cd guest && cargo fmt -- --check && cargo clippy --release -- -D warnings
    RUSTDOCFLAGS="-D warnings" cargo doc --no-deps

# The soak: safe designs under injection for SECONDS (default 600) at VCPUS (64).
soak SECONDS="600" VCPUS="64":
    SOAK_SECONDS={{SECONDS}} SOAK_VCPUS={{VCPUS}} scripts/soak
