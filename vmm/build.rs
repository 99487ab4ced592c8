//! Builds the guest micro-kernel (../guest) with its own flags and target
//! directory, and hands its ELF path to the crate as IPIVIRT_GUEST_ELF so
//! that the VMM embeds it: `cargo build` is the only build step.
use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let guest_dir = manifest
        .join("../guest")
        .canonicalize()
        .expect("the guest crate sits beside vmm/");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    let target_dir = out_dir.join("guest-target");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());

    // The guest's own .cargo/config.toml carries its flags; the outer
    // build's flags and target dir must not leak into it.
    let status = Command::new(cargo)
        .current_dir(&guest_dir)
        .args([
            "build",
            "--release",
            "--target",
            "x86_64-unknown-linux-gnu",
            "--target-dir",
        ])
        .arg(&target_dir)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_MAKEFLAGS")
        .status()
        .expect("failed to run cargo for the guest");
    assert!(
        status.success(),
        "building the guest (guest/) failed: see the errors above"
    );

    let elf = target_dir.join("x86_64-unknown-linux-gnu/release/ipivirt-guest");
    println!("cargo:rustc-env=IPIVIRT_GUEST_ELF={}", elf.display());
    for path in [
        "src",
        "Cargo.toml",
        "Cargo.lock",
        "build.rs",
        "link.ld",
        ".cargo/config.toml",
    ] {
        println!("cargo:rerun-if-changed={}", guest_dir.join(path).display());
    }
    for dep in ["../abi/src", "../guest-lib/src"] {
        println!("cargo:rerun-if-changed={}", guest_dir.join(dep).display());
    }
}
