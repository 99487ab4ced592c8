//! Drives the VMM's readers of guest-written data with arbitrary input:
//! the cargo-fuzz target (`fuzz/`), its stable replay driver and the
//! property tests below all go through [`exercise`], which calls exactly
//! what the VMM calls at the end of a run ([`results::parse_and_validate`]
//! = [`results::boot_report`] with the contract validators,
//! [`results::explain`] for every failure kind, and the text reports).

use abi::{
    vcpu_state, verdict, Histogram, Pod, SharedPage, VcpuResults, ABI_VERSION, RESULTS_MAGIC,
};

use crate::machine::{BootReport, MachineConfig};
use crate::results::{self, FailureKind};
use crate::vcpu::VcpuFault;

/// Largest guest the fuzz input selects (keeps one case fast).
pub const MAX_FUZZ_VCPUS: u32 = 8;

/// Offset of the results block in the shared page.
const RESULTS_OFFSET: usize = std::mem::offset_of!(SharedPage, results);
/// Offset of the per-vCPU status table in the shared page.
const VCPUS_OFFSET: usize = std::mem::offset_of!(SharedPage, vcpus);
const STATUS_SIZE: usize = std::mem::size_of::<abi::VcpuStatus>();
const VCPU_RESULTS_SIZE: usize = std::mem::size_of::<VcpuResults>();

/// The shared page and per-vCPU results of a well-behaved finished run of
/// `vcpus` vCPUs, as bytes (what [`results::parse_and_validate`] accepts).
pub fn valid_run(vcpus: u32) -> (Vec<u8>, Vec<u8>) {
    let mut page = crate::memory::boxed_zeroed::<SharedPage>();
    page.control = abi::Control::new(vcpus);
    let r = &mut page.results;
    r.magic = RESULTS_MAGIC;
    r.abi_version = ABI_VERSION;
    r.nr_online = vcpus;
    r.boot_tsc = 1_000;
    r.all_online_tsc = 50_000;
    r.verdict = verdict::CPL0_EMULATED;
    r.tick_hz = 100;
    r.mode = abi::guest_mode::PLAIN;
    r.cpl0_cycles_per_kiter = 1_250_000;
    r.cpl3_cycles_per_kiter = 760;
    r.tasks_created = 3 * u64::from(vcpus);
    r.tasks_freed = 2 * u64::from(vcpus);
    r.workload_start_tsc = 60_000;
    r.workload_end_tsc = 5_000_000_000;
    r.hogs[0].iterations = 77;
    r.hogs[0].cpus_mask = 0b101;
    for (i, s) in page.vcpus.iter_mut().take(vcpus as usize).enumerate() {
        s.state = vcpu_state::ONLINE;
        s.apic_id = i as u32;
        s.mode = abi::guest_mode::PLAIN;
        s.sched.context_switches = 10 + i as u64;
        s.sched.ticks = 100;
    }
    let mut per = Vec::with_capacity(vcpus as usize * VCPU_RESULTS_SIZE);
    for i in 0..u64::from(vcpus) {
        let mut probe = Histogram::new();
        for v in [3, 900 + i, 25_000, 1 << 33] {
            probe.record(v);
        }
        per.extend_from_slice(
            VcpuResults {
                probe,
                calls: probe,
                probe_split: abi::ProbeSplit {
                    arrival: probe,
                    dispatch: probe,
                },
            }
            .as_bytes(),
        );
    }
    (page.as_bytes().to_vec(), per)
}

/// Runs every reader on one input and returns what the VMM would conclude.
///
/// `data[0]` selects the guest size (1..=[`MAX_FUZZ_VCPUS`]) and `data[1]`
/// the mode. Raw mode (odd `data[1]`): the rest is the shared page followed
/// by the per-vCPU results, as given (short input included). Patch mode:
/// the rest is a list of patches `(offset: u32 LE, n: u8, n%8+1 bytes)`
/// applied to [`valid_run`] within the bytes the VMM reads (results block,
/// the status entries of the guest's vCPUs, the per-vCPU results), so that
/// random input reaches every check, not only the magic.
pub fn exercise(data: &[u8]) -> Result<BootReport, FailureKind> {
    let vcpus = u32::from(data.first().copied().unwrap_or(0)) % MAX_FUZZ_VCPUS + 1;
    let raw = data.get(1).is_some_and(|m| m & 1 == 1);
    let rest = data.get(2..).unwrap_or(&[]);
    let (page, per) = if raw {
        let split = rest.len().min(std::mem::size_of::<SharedPage>());
        (rest[..split].to_vec(), rest[split..].to_vec())
    } else {
        let (mut page, mut per) = valid_run(vcpus);
        apply_patches(&mut page, &mut per, vcpus, rest);
        (page, per)
    };
    let outcome = results::parse_and_validate(&page, &per, vcpus);
    // Render what the CLI would print, so formatting is exercised too.
    match &outcome {
        Ok(report) => {
            // Through the report model, as a run's text is rendered.
            let config = MachineConfig::new(vcpus);
            let model = crate::scenario::Report::new(&config, report.clone());
            std::hint::black_box(crate::report::scheduler_text(&model));
            std::hint::black_box(crate::report::host_text(&model));
            std::hint::black_box(model.to_json());
        }
        Err(kind) => {
            std::hint::black_box(kind.to_string());
        }
    }
    // The failure paths read the panic and exception records.
    if let Some(parsed) = results::parse_page(&page) {
        let fault = VcpuFault::InternalError {
            suberror: 1,
            data: vec![],
        };
        for kind in [
            FailureKind::Panic(None),
            FailureKind::Exception(None, vcpus - 1),
            FailureKind::Fault {
                vcpu: parsed.results.panic.vcpu,
                fault,
            },
        ] {
            std::hint::black_box(results::explain(kind, &parsed).to_string());
        }
        std::hint::black_box(results::offline_vcpus(&parsed, vcpus, 16));
    }
    outcome
}

/// Applies `(offset, n, bytes)` patches to the bytes the VMM reads.
fn apply_patches(page: &mut [u8], per: &mut [u8], vcpus: u32, mut script: &[u8]) {
    let results_len = std::mem::size_of::<abi::Results>();
    let status_len = vcpus as usize * STATUS_SIZE;
    let span = results_len + status_len + per.len();
    while script.len() >= 5 {
        let offset = u32::from_le_bytes([script[0], script[1], script[2], script[3]]) as usize;
        let n = usize::from(script[4] % 8) + 1;
        let value = &script[5..script.len().min(5 + n)];
        script = &script[(5 + n).min(script.len())..];
        for (k, &b) in value.iter().enumerate() {
            let at = (offset + k) % span;
            if at < results_len {
                page[RESULTS_OFFSET + at] = b;
            } else if at < results_len + status_len {
                page[VCPUS_OFFSET + at - results_len] = b;
            } else {
                per[at - results_len - status_len] = b;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

    /// Cases per property: fixed seed, bounded count (each case is a few
    /// microseconds, so the whole module stays well under a second or two).
    const CASES: u32 = 2000;

    fn runner(seed: u8) -> TestRunner {
        TestRunner::new_with_rng(
            Config {
                cases: CASES,
                failure_persistence: None,
                ..Config::default()
            },
            TestRng::from_seed(RngAlgorithm::ChaCha, &[seed; 32]),
        )
    }

    /// Every error names a field ("field = value, expected ...") or a
    /// failure the VMM knows.
    fn assert_clear(outcome: &Result<BootReport, FailureKind>) {
        if let Err(kind) = outcome {
            let text = kind.to_string();
            let ok = match kind {
                FailureKind::InvalidResults(e) => {
                    !e.field.is_empty() && text.contains(e.field) && text.contains(", expected ")
                }
                FailureKind::NotAllOnline { .. } => text.contains("vCPUs came online"),
                _ => false,
            };
            assert!(ok, "unclear error: {text}");
        }
    }

    #[test]
    fn test_fuzzing_valid_run_is_accepted() {
        for vcpus in 1..=MAX_FUZZ_VCPUS {
            let (page, per) = valid_run(vcpus);
            let r = results::parse_and_validate(&page, &per, vcpus).unwrap();
            assert_eq!(r.online, vcpus);
            assert_eq!(r.guest.probe.count, 4 * u64::from(vcpus));
        }
        assert!(exercise(&[3, 0]).is_ok());
    }

    #[test]
    fn test_fuzzing_arbitrary_bytes_never_panic() {
        runner(1)
            .run(&proptest::collection::vec(any::<u8>(), 0..512), |data| {
                assert_clear(&exercise(&data));
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn test_fuzzing_raw_pages_never_panic() {
        let len = std::mem::size_of::<SharedPage>() + 8 * VCPU_RESULTS_SIZE;
        runner(2)
            .run(
                &(
                    any::<u8>(),
                    proptest::collection::vec(any::<u8>(), 0..64),
                    0..len,
                ),
                |(vcpus, noise, cut)| {
                    // A valid run with its tail cut and noise sprinkled in.
                    let (mut page, per) = valid_run(u32::from(vcpus) % MAX_FUZZ_VCPUS + 1);
                    page.extend_from_slice(&per);
                    for (i, b) in noise.iter().enumerate() {
                        let at = (i * 7919 + usize::from(*b) * 131) % page.len();
                        page[at] ^= b | 1;
                    }
                    page.truncate(cut.max(1));
                    let mut data = vec![vcpus, 1];
                    data.extend_from_slice(&page);
                    assert_clear(&exercise(&data));
                    Ok(())
                },
            )
            .unwrap();
    }

    #[test]
    fn test_fuzzing_random_patches_never_panic() {
        runner(3)
            .run(&proptest::collection::vec(any::<u8>(), 0..256), |script| {
                let mut data = vec![script.first().copied().unwrap_or(0), 0];
                data.extend_from_slice(&script);
                assert_clear(&exercise(&data));
                Ok(())
            })
            .unwrap();
    }

    /// Each corrupted field is reported by name.
    #[test]
    fn test_fuzzing_corrupted_field_is_named() {
        let status_state = std::mem::offset_of!(abi::VcpuStatus, state);
        let strategy = (0usize..9, 1u32..=MAX_FUZZ_VCPUS, any::<u64>(), any::<u32>());
        runner(4)
            .run(&strategy, |(which, vcpus, x, pick)| {
                let (page_bytes, per_bytes) = valid_run(vcpus);
                let mut page = crate::memory::boxed_from_bytes::<SharedPage>(&page_bytes).unwrap();
                let mut per: Vec<VcpuResults> = per_bytes
                    .chunks_exact(VCPU_RESULTS_SIZE)
                    .map(|c| VcpuResults::read_from(c).unwrap())
                    .collect();
                let r = &mut page.results;
                let v = (pick % vcpus) as usize;
                let field = match which {
                    0 => {
                        r.magic = if x == RESULTS_MAGIC { 0 } else { x };
                        "results.magic"
                    }
                    1 => {
                        r.abi_version = if x as u32 == ABI_VERSION { 0 } else { x as u32 };
                        "results.abi_version"
                    }
                    2 => {
                        r.nr_online = vcpus + 1 + (x as u32 % (u32::MAX - vcpus));
                        "results.nr_online"
                    }
                    3 => {
                        r.boot_tsc = r.all_online_tsc + 1 + x % (u64::MAX - r.all_online_tsc);
                        "results.all_online_tsc"
                    }
                    4 => {
                        page.vcpus[v].state = 2 + (x as u32 % (u32::MAX - 1));
                        "vcpus[].state"
                    }
                    5 => {
                        r.verdict = 3 + (x as u32 % (u32::MAX - 2));
                        "results.verdict"
                    }
                    6 => {
                        r.workload_end_tsc = x % r.workload_start_tsc;
                        "results.workload_end_tsc"
                    }
                    7 => {
                        r.tasks_freed = r.tasks_created + 1 + x % 1_000_000;
                        "results.tasks_freed"
                    }
                    _ => {
                        let h = &mut per[v].probe;
                        let b = (pick as usize) % h.buckets.len();
                        h.buckets[b] = h.buckets[b].wrapping_add(1 + (x as u32 % 1000));
                        "vcpu_results[].probe"
                    }
                };
                let _ = status_state;
                let per_bytes: Vec<u8> = per.iter().flat_map(|p| p.as_bytes().to_vec()).collect();
                let err = results::parse_and_validate(page.as_bytes(), &per_bytes, vcpus)
                    .expect_err(field);
                let text = err.to_string();
                prop_assert!(text.contains(field), "{field}: {text}");
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn test_fuzzing_short_inputs_name_what_is_missing() {
        let (page, per) = valid_run(2);
        let err = results::parse_and_validate(&page[..100], &per, 2).unwrap_err();
        assert!(err.to_string().contains("shared page = 0x64"), "{err}");
        let err = results::parse_and_validate(&page, &per[..10], 2).unwrap_err();
        assert!(err.to_string().contains("vcpu_results = 0x0"), "{err}");
    }
}
