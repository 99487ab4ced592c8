//! The fuzz target on stable Rust without libFuzzer: feeds `N` seeded
//! random inputs (or the files given) through the same function as the
//! `results` target and stops at the first panic.
//!
//! ```text
//! cargo run --release --no-default-features --bin replay -- 1000000 [SEED] [SECONDS]
//! cargo run --release --no-default-features --bin replay -- FILE...
//! ```
//! Inputs are drawn from a xorshift generator: lengths up to 600 bytes,
//! three in four in patch mode (random patches on a valid run, which reach
//! every check), one in four raw.

use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a.parse::<u64>().is_err()) {
        for path in &args {
            let data = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
            println!(
                "{path}: {:?}",
                ipivirt_vmm::fuzzing::exercise(&data).map(|r| r.online)
            );
        }
        return;
    }
    let count: u64 = args.first().map_or(1_000_000, |a| a.parse().unwrap());
    let seed: u64 = args.get(1).map_or(1, |a| a.parse().unwrap());
    let budget = Duration::from_secs(args.get(2).map_or(3600, |a| a.parse().unwrap()));
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let started = Instant::now();
    let (mut ok, mut rejected) = (0u64, 0u64);
    let mut data = Vec::with_capacity(600);
    let mut ran = 0u64;
    while ran < count && started.elapsed() < budget {
        data.clear();
        let len = (next() % 600) as usize;
        data.extend((0..len).map(|_| next() as u8));
        if data.len() >= 2 {
            // Three in four in patch mode.
            data[1] = u8::from(next() % 4 == 0);
        }
        match ipivirt_vmm::fuzzing::exercise(&data) {
            Ok(_) => ok += 1,
            Err(_) => rejected += 1,
        }
        ran += 1;
        if ran % 1_000_000 == 0 {
            eprintln!("{ran} inputs, {:.0} s", started.elapsed().as_secs_f64());
        }
    }
    println!(
        "{ran} inputs in {:.1} s without a finding (seed {seed}): {ok} accepted, {rejected} rejected with a field error",
        started.elapsed().as_secs_f64()
    );
}
