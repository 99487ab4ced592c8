//! The guest image must run where KVM emulates guest kernel code (nested
//! hosts such as ipivirt's CI): KVM's instruction emulator implements only
//! the SSE moves. This disassembles the embedded guest and fails on any
//! other SSE/MMX instruction outside the few `core` functions known to use
//! them only on paths the guest never takes (see guest/src/kernel/fmt.rs).

use std::process::Command;

/// SSE instructions KVM's emulator implements (arch/x86/kvm/emulate.c).
const EMULATED: &[&str] = &[
    "movups", "movupd", "movaps", "movapd", "movdqu", "movdqa", "movntps", "movntpd", "movntdq",
];

/// core functions whose SSE paths the guest never reaches: `pad` and
/// `do_count_chars` only with a width or precision; integer formatting
/// only when a core panic message (e.g. a bounds check) is formatted, and
/// then the panic handler has already recorded the location.
const ALLOWED_FUNCTIONS: &[&str] = &[
    "<core::fmt::Formatter>::pad>",
    "core::str::count::do_count_chars",
    "<core::fmt::Formatter>::pad_integral",
    "as core::fmt::Display>::fmt>",
];

#[test]
fn test_guest_image_has_no_unemulated_sse() {
    let path = std::env::temp_dir().join(format!("ipivirt-guest-{}.elf", std::process::id()));
    std::fs::write(&path, ipivirt::loader::GUEST_ELF).unwrap();
    let out = Command::new("objdump")
        .args(["-d", "-C", "--no-show-raw-insn", "-M", "intel"])
        .arg(&path)
        .output()
        .expect("objdump (binutils) is needed for this test");
    let _ = std::fs::remove_file(&path);
    assert!(out.status.success());
    let listing = String::from_utf8_lossy(&out.stdout);
    let mut function = String::new();
    let mut offenders = Vec::new();
    for line in listing.lines() {
        if line.ends_with(">:") {
            function = line.to_string();
            continue;
        }
        let Some(insn) = line.split('\t').nth(1) else {
            continue;
        };
        let mnemonic = insn.split_whitespace().next().unwrap_or_default();
        let uses_vector = insn.contains("xmm")
            || insn.contains("ymm")
            || insn
                .split(|c: char| !c.is_alphanumeric())
                .any(|w| w.len() == 3 && w.starts_with("mm"));
        if uses_vector
            && !EMULATED.contains(&mnemonic)
            && !ALLOWED_FUNCTIONS.iter().any(|f| function.contains(f))
        {
            offenders.push(format!("{function} {insn}"));
        }
    }
    assert!(
        offenders.is_empty(),
        "SSE that KVM cannot emulate in the guest:\n{}",
        offenders.join("\n")
    );
}
