//! libFuzzer target: the VMM's readers of the results page, the status
//! entries and the per-vCPU results (see `ipivirt_vmm::fuzzing::exercise`
//! for how the input is read). A finding is a panic, an abort or an
//! allocation past libFuzzer's `-rss_limit_mb`/`-malloc_limit_mb`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ipivirt_vmm::fuzzing::exercise(data);
});
