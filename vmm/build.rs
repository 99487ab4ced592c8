//! Builds the guest micro-kernel (../guest) with its own flags and target
//! directory, and hands its ELF path to the crate as IPIVIRT_GUEST_ELF so
//! that the VMM embeds it: `cargo build` is the only build step. It also
//! records the git commit being built (IPIVIRT_GIT_COMMIT) for the
//! report's provenance.
use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    git_commit(&manifest);
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

/// Hands the git commit of the checkout being built to the crate as
/// IPIVIRT_GIT_COMMIT (`<sha>`, or `<sha>-dirty` with uncommitted changes
/// to tracked files), for the report's provenance; unset outside a
/// checkout or without git.
fn git_commit(manifest: &std::path::Path) {
    let git = |args: &[&str]| {
        Command::new("git")
            .current_dir(manifest)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let Some(sha) = git(&["rev-parse", "HEAD"]) else {
        return;
    };
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    let suffix = if dirty { "-dirty" } else { "" };
    println!("cargo:rustc-env=IPIVIRT_GIT_COMMIT={sha}{suffix}");
    // Rerun when HEAD moves (a commit, a checkout) or the index changes.
    for args in [
        &["rev-parse", "--git-path", "HEAD"][..],
        &["rev-parse", "--git-path", "index"],
        &["rev-parse", "--git-path", "packed-refs"],
    ] {
        if let Some(p) = git(args) {
            println!("cargo:rerun-if-changed={}", manifest.join(p).display());
        }
    }
    if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
        if let Some(p) = git(&["rev-parse", "--git-path", &r]) {
            println!("cargo:rerun-if-changed={}", manifest.join(p).display());
        }
    }
    // Edits to the VMM's sources change the dirty flag.
    println!("cargo:rerun-if-changed={}", manifest.join("src").display());
}
