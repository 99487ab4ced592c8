//! CPU hotplug from the host: at the scheduled times, ask a vCPU to go
//! offline, and later to come back, by writing its hotplug request word in
//! the PV state and sending it the HOTPLUG interrupt (KVM_SIGNAL_MSI: an
//! idle or offline vCPU has no tick to poll in). Hypercalls are not
//! needed: on the nested PVM host the guest could not make them.
//!
//! The guest decides: it refuses the boot vCPU and any request that would
//! leave fewer than two vCPUs online (the schedule never asks for those),
//! and acts on a request only while its workload runs. Each cycle is one
//! timeline event: from the offline request to the online request.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::schedule::HotplugStream;
use super::trace::EventKind;
use super::{Shared, ThreadOutcome};
use crate::pv::PvHost;

/// Runs the hotplug injector until stopped; every vCPU it took offline is
/// asked back before it returns.
pub(crate) fn run(shared: &Shared, stream: HotplugStream, host: Arc<PvHost>) -> ThreadOutcome {
    let mut out = ThreadOutcome::default();
    let mut stream = stream.peekable();
    // vCPU -> (when to bring it back, when it was asked to go, the request).
    let mut down: BTreeMap<u32, (Duration, Instant, u32)> = BTreeMap::new();
    let back_online = |out: &mut ThreadOutcome, v: u32, since: Instant, req: u32| {
        let done = host.hotplug_done(v);
        if done == req {
            out.hotplug_acked += 1;
        } else if done == req | abi::pv::HOTPLUG_REFUSED {
            out.hotplug_refused += 1;
        }
        if let Err(e) = host.hotplug_request(v, false) {
            if out.errors.len() < 4 {
                out.errors
                    .push(format!("hotplug: bringing vCPU {v} online: {e}"));
            }
        }
        let slot = shared
            .slots
            .get(v as usize)
            .map_or(usize::MAX, |s| s.load(std::sync::atomic::Ordering::Relaxed));
        out.push(shared.event(since, EventKind::Hotplug, vec![v], slot, since.elapsed()));
    };
    loop {
        let next_off = stream.peek().map(|p| p.at);
        let next_on = down.values().map(|d| d.0).min();
        let Some(due) = [next_off, next_on].into_iter().flatten().min() else {
            break;
        };
        if !shared.sleep_until(shared.t0 + due) {
            break;
        }
        let now = shared.t0.elapsed();
        let back: Vec<u32> = down
            .iter()
            .filter(|(_, d)| d.0 <= now)
            .map(|(&v, _)| v)
            .collect();
        for v in back {
            if let Some((_, since, req)) = down.remove(&v) {
                back_online(&mut out, v, since, req);
            }
        }
        while let Some(p) = stream.next_if(|p| p.at <= now) {
            if down.contains_key(&p.vcpu) {
                continue;
            }
            match host.hotplug_request(p.vcpu, true) {
                Ok(req) => {
                    down.insert(p.vcpu, (now + p.len, Instant::now(), req));
                }
                Err(e) => {
                    if out.errors.len() < 4 {
                        out.errors
                            .push(format!("hotplug: taking vCPU {} offline: {e}", p.vcpu));
                    }
                }
            }
        }
    }
    for (v, (_, since, req)) in std::mem::take(&mut down) {
        back_online(&mut out, v, since, req);
    }
    out
}
