//! The invariant checker's request table: every checked cross call gets a
//! slot holding the CPUs that must run it and those that did, so that the
//! checker can tell, lock-free and from any CPU, whether a callback ran on
//! the wrong CPU, ran twice, ran after its waiting caller returned, or never
//! ran. Only the bookkeeping is here; what a violation costs (the counters,
//! the log, the time stamp) is the guest checker's business: every check
//! returns the violations it found as `(kind, cpu, request id)`, `kind` one
//! of [`abi::violation`].
//!
//! A request's token is its slot index plus one (0: not tracked, because
//! the slot its id maps to is still in use). A slot is free once every
//! target ran (or was skipped) and its caller returned: `remaining` counts
//! both, so a slot is never reused under a late callback.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use abi::violation;

use crate::cpumask::{for_each_cpu, nr_words, CpuMask, MAX_WORDS};

/// What the payload of request `id` must hold (a value no stale or
/// zeroed slot holds by chance).
fn payload_of(id: u64) -> u64 {
    id.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// One request.
pub struct Request {
    id: AtomicU64,
    targets: [AtomicU64; MAX_WORDS],
    ran: [AtomicU64; MAX_WORDS],
    /// Targets the caller deferred (flush-defer): they run the callback when
    /// they resume, after the caller returned.
    deferred: [AtomicU64; MAX_WORDS],
    /// Targets still to run, plus one for the caller's return; 0: free.
    remaining: AtomicU32,
    returned: AtomicBool,
    /// The waiting caller's targets were checked where its wait returned
    /// ([`RequestTable::wait_returned`]), so `end` does not check again.
    checked: AtomicBool,
    wait: AtomicBool,
    /// Written by the caller before the call; callbacks must see it.
    payload: AtomicU64,
    /// Written by an RPC callback; the caller checks it after the wait.
    reply: AtomicU64,
}

impl Request {
    /// A free slot.
    pub const fn new() -> Self {
        Request {
            id: AtomicU64::new(0),
            targets: [const { AtomicU64::new(0) }; MAX_WORDS],
            ran: [const { AtomicU64::new(0) }; MAX_WORDS],
            deferred: [const { AtomicU64::new(0) }; MAX_WORDS],
            remaining: AtomicU32::new(0),
            returned: AtomicBool::new(false),
            checked: AtomicBool::new(false),
            wait: AtomicBool::new(false),
            payload: AtomicU64::new(0),
            reply: AtomicU64::new(0),
        }
    }

    fn release(&self) {
        // Release: our accesses to the slot before a new claim reuses it.
        self.remaining.fetch_sub(1, Ordering::Release);
    }
}

impl Default for Request {
    fn default() -> Self {
        Self::new()
    }
}

/// A violation found: `(kind, cpu, request id)`.
pub type Violation = (u32, u32, u64);

/// `SLOTS` requests in flight at most (ids map to slots round robin).
pub struct RequestTable<const SLOTS: usize> {
    slots: [Request; SLOTS],
    /// Ids handed out so far (the next is one more): all-zero when new, so
    /// a static table costs the guest image nothing (`.bss`).
    ids: AtomicU64,
}

impl<const SLOTS: usize> RequestTable<SLOTS> {
    /// An empty table.
    pub const fn new() -> Self {
        RequestTable {
            slots: [const { Request::new() }; SLOTS],
            ids: AtomicU64::new(0),
        }
    }

    fn slot(&self, token: usize) -> Option<&Request> {
        self.slots.get(token.checked_sub(1)?)
    }

    /// Registers a request for `targets`; returns the token callbacks get
    /// (0: not tracked because its slot is still in use).
    pub fn begin(&self, targets: &CpuMask, wait: bool) -> usize {
        let id = self.ids.fetch_add(1, Ordering::Relaxed) + 1;
        let slot = (id as usize) % SLOTS;
        let r = &self.slots[slot];
        // Claim the slot only if its previous request is fully done.
        if r.remaining
            .compare_exchange(
                0,
                targets.weight() + 1,
                Ordering::Acquire,
                Ordering::Relaxed,
            )
            .is_err()
        {
            return 0;
        }
        for i in 0..nr_words() {
            r.targets[i].store(targets.words[i], Ordering::Relaxed);
            r.ran[i].store(0, Ordering::Relaxed);
            r.deferred[i].store(0, Ordering::Relaxed);
        }
        r.returned.store(false, Ordering::Relaxed);
        r.checked.store(false, Ordering::Relaxed);
        r.wait.store(wait, Ordering::Relaxed);
        // Release: the request's fields before the id callbacks check.
        r.id.store(id, Ordering::Release);
        slot + 1
    }

    /// The id of `token`'s request (0: untracked).
    pub fn id(&self, token: usize) -> u64 {
        self.slot(token).map_or(0, |r| r.id.load(Ordering::Relaxed))
    }

    /// The value `token`'s payload must hold (None: untracked).
    pub fn expected_payload(&self, token: usize) -> Option<u64> {
        Some(payload_of(self.slot(token)?.id.load(Ordering::Acquire)))
    }

    /// Caller: writes the payload of `token` (a plain relaxed store: the
    /// cross call itself must publish it to the callbacks).
    pub fn set_payload(&self, token: usize) {
        if let (Some(v), Some(r)) = (self.expected_payload(token), self.slot(token)) {
            r.payload.store(v, Ordering::Relaxed);
        }
    }

    /// Callback: whether the caller's payload is visible here (true if
    /// untracked).
    pub fn payload_visible(&self, token: usize) -> bool {
        match (self.expected_payload(token), self.slot(token)) {
            (Some(v), Some(r)) => r.payload.load(Ordering::Relaxed) == v,
            _ => true,
        }
    }

    /// RPC callback: writes the reply for the caller.
    pub fn set_reply(&self, token: usize, value: u64) {
        if let Some(r) = self.slot(token) {
            r.reply.store(value, Ordering::Relaxed);
        }
    }

    /// RPC caller, after the wait: the reply (None: untracked).
    pub fn reply(&self, token: usize) -> Option<u64> {
        self.slot(token).map(|r| r.reply.load(Ordering::Relaxed))
    }

    /// Whether `cpu` is a target of `token`'s request (true if untracked).
    pub fn is_target(&self, token: usize, cpu: u32) -> bool {
        match self.slot(token) {
            Some(r) => {
                r.targets[cpu as usize / 64].load(Ordering::Relaxed) & (1 << (cpu % 64)) != 0
            }
            None => true,
        }
    }

    /// The caller of `token` learnt that the CPUs of `skipped` were offline
    /// and left out of its call: they are no longer expected to run it.
    pub fn skip(&self, token: usize, skipped: &CpuMask) {
        let Some(r) = self.slot(token) else {
            return;
        };
        for i in 0..nr_words() {
            let gone =
                r.targets[i].fetch_and(!skipped.words[i], Ordering::AcqRel) & skipped.words[i];
            for _ in 0..gone.count_ones() {
                r.release();
            }
        }
    }

    /// flush-defer: the caller of `token` deferred `cpu` (it runs the
    /// callback when it resumes; the caller does not wait for it).
    pub fn defer(&self, token: usize, cpu: u32) {
        if let Some(r) = self.slot(token) {
            r.deferred[cpu as usize / 64].fetch_or(1 << (cpu % 64), Ordering::AcqRel);
        }
    }

    /// flush-defer: the deferral of `cpu` was taken back (it resumed first).
    pub fn undefer(&self, token: usize, cpu: u32) {
        if let Some(r) = self.slot(token) {
            r.deferred[cpu as usize / 64].fetch_and(!(1 << (cpu % 64)), Ordering::AcqRel);
        }
    }

    /// `cpu` ran the callback of `token` (`deferred`: flush-defer's late
    /// run, after the caller returned by design); `report` gets each
    /// violation. A run after a waiting caller returned still counts as
    /// the run; one on a wrong CPU or a second one does not.
    pub fn run(&self, token: usize, cpu: u32, deferred: bool, mut report: impl FnMut(Violation)) {
        let Some(r) = self.slot(token) else {
            return;
        };
        let id = r.id.load(Ordering::Acquire);
        let (w, bit) = (cpu as usize / 64, 1u64 << (cpu % 64));
        if !deferred && r.wait.load(Ordering::Relaxed) && r.returned.load(Ordering::Acquire) {
            report((violation::RAN_AFTER_RETURN, cpu, id));
        }
        if r.targets[w].load(Ordering::Relaxed) & bit == 0 {
            report((violation::WRONG_CPU, cpu, id));
            return;
        }
        // AcqRel: the caller's check of `ran` sees this run (pairs with end()).
        if r.ran[w].fetch_or(bit, Ordering::AcqRel) & bit != 0 {
            report((violation::RAN_TWICE, cpu, id));
            return;
        }
        r.release();
    }

    /// The waiting call of `token` just returned from its wait (`skipped`:
    /// the offline targets it left out): every target must have run now;
    /// `report` gets each one that did not. A callback after this is one
    /// after the return. Its caller's [`end`](Self::end) does not check
    /// again.
    pub fn wait_returned(&self, token: usize, skipped: &CpuMask, report: impl FnMut(Violation)) {
        self.skip(token, skipped);
        let Some(r) = self.slot(token) else {
            return;
        };
        if r.wait.load(Ordering::Relaxed) {
            Self::check_ran(r, report);
            r.checked.store(true, Ordering::Relaxed);
            // Release: a callback that sees this runs after the return.
            r.returned.store(true, Ordering::Release);
        }
    }

    /// Reports every target of the waiting request `r` that has not run
    /// (deferred ones run later).
    fn check_ran(r: &Request, mut report: impl FnMut(Violation)) {
        let id = r.id.load(Ordering::Relaxed);
        for i in 0..nr_words() {
            let missing = r.targets[i].load(Ordering::Relaxed)
                & !r.ran[i].load(Ordering::Acquire)
                & !r.deferred[i].load(Ordering::Acquire);
            for_each_cpu(
                1,
                |_| missing,
                |c| report((violation::NOT_RUN, i as u32 * 64 + c, id)),
            );
        }
    }

    /// The caller of `token` returns: for a waiting call, every target must
    /// have run (deferred ones run later; checked here unless
    /// [`wait_returned`](Self::wait_returned) did); `report` gets each one
    /// that did not.
    pub fn end(&self, token: usize, report: impl FnMut(Violation)) {
        let Some(r) = self.slot(token) else {
            return;
        };
        if r.wait.load(Ordering::Relaxed) && !r.checked.load(Ordering::Relaxed) {
            Self::check_ran(r, report);
        }
        r.returned.store(true, Ordering::Release);
        r.release();
    }

    /// End of a phase, once it quiesced: a request whose caller returned
    /// but that is still pending lost a callback (`report` gets each); such
    /// slots are freed. A slot a caller still holds is left as it is, so
    /// its later `end()` and callbacks cannot underflow it.
    pub fn check_lost(&self, mut report: impl FnMut(Violation)) {
        for r in self.slots.iter() {
            if r.remaining.load(Ordering::Acquire) == 0 || !r.returned.load(Ordering::Acquire) {
                continue;
            }
            let id = r.id.load(Ordering::Relaxed);
            for i in 0..nr_words() {
                let missing =
                    r.targets[i].load(Ordering::Relaxed) & !r.ran[i].load(Ordering::Relaxed);
                for_each_cpu(
                    1,
                    |_| missing,
                    |c| report((violation::LOST, i as u32 * 64 + c, id)),
                );
            }
            r.remaining.store(0, Ordering::Release);
        }
    }
}

impl<const SLOTS: usize> Default for RequestTable<SLOTS> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::with_cpus;
    use std::vec::Vec;

    fn mask(cpus: &[u32]) -> CpuMask {
        let mut m = CpuMask::new();
        cpus.iter().for_each(|&c| m.set(c));
        m
    }

    fn ended<const N: usize>(t: &RequestTable<N>, token: usize) -> Vec<Violation> {
        let mut v = Vec::new();
        t.end(token, |x| v.push(x));
        v
    }

    fn ran<const N: usize>(
        t: &RequestTable<N>,
        token: usize,
        cpu: u32,
        deferred: bool,
    ) -> Option<Violation> {
        let mut v = Vec::new();
        t.run(token, cpu, deferred, |x| v.push(x));
        assert!(v.len() <= 1, "one violation per run here: {v:?}");
        v.pop()
    }

    fn lost<const N: usize>(t: &RequestTable<N>) -> Vec<Violation> {
        let mut v = Vec::new();
        t.check_lost(|x| v.push(x));
        v
    }

    #[test]
    fn a_call_every_target_ran_once_is_clean_and_frees_its_slot() {
        with_cpus(4, || {
            let t = RequestTable::<2>::new();
            let tok = t.begin(&mask(&[1, 3]), true);
            assert_ne!(tok, 0);
            assert_eq!(ran(&t, tok, 1, false), None);
            assert_eq!(ran(&t, tok, 3, false), None);
            assert!(ended(&t, tok).is_empty());
            assert!(lost(&t).is_empty());
            // Both slots free: the next two requests are tracked.
            assert_ne!(t.begin(&mask(&[0]), false), 0);
            assert_ne!(t.begin(&mask(&[0]), false), 0);
        });
    }

    #[test]
    fn wrong_cpu_twice_after_return_and_not_run_are_each_reported() {
        with_cpus(8, || {
            let t = RequestTable::<4>::new();
            let tok = t.begin(&mask(&[2, 5]), true);
            let id = t.id(tok);
            assert_eq!(ran(&t, tok, 4, false), Some((violation::WRONG_CPU, 4, id)));
            assert_eq!(ran(&t, tok, 2, false), None);
            assert_eq!(ran(&t, tok, 2, false), Some((violation::RAN_TWICE, 2, id)));
            assert_eq!(ended(&t, tok), [(violation::NOT_RUN, 5, id)]);
            // The late run is reported and still counted: nothing is lost.
            assert_eq!(
                ran(&t, tok, 5, false),
                Some((violation::RAN_AFTER_RETURN, 5, id))
            );
            assert!(lost(&t).is_empty());
        });
    }

    #[test]
    fn a_call_is_checked_where_its_wait_returned_and_not_again_at_its_end() {
        with_cpus(4, || {
            let t = RequestTable::<2>::new();
            let tok = t.begin(&mask(&[1, 2, 3]), true);
            let id = t.id(tok);
            assert_eq!(ran(&t, tok, 1, false), None);
            // Target 3 went offline and was left out; 2 has not run yet.
            let mut seen = Vec::new();
            t.wait_returned(tok, &mask(&[3]), |v| seen.push(v));
            assert_eq!(seen, [(violation::NOT_RUN, 2, id)]);
            // Its callback runs before the caller's end: after the return.
            assert_eq!(
                ran(&t, tok, 2, false),
                Some((violation::RAN_AFTER_RETURN, 2, id))
            );
            assert!(ended(&t, tok).is_empty());
            assert!(lost(&t).is_empty());
            // Skipping 3 again (the caller's own skip) releases nothing twice.
            t.skip(tok, &mask(&[3]));
            assert_ne!(t.begin(&mask(&[0]), false), 0);
        });
    }

    #[test]
    fn a_late_run_on_a_wrong_cpu_reports_both() {
        with_cpus(4, || {
            let t = RequestTable::<2>::new();
            let tok = t.begin(&mask(&[1]), true);
            let id = t.id(tok);
            assert_eq!(ran(&t, tok, 1, false), None);
            assert!(ended(&t, tok).is_empty());
            let mut v = Vec::new();
            t.run(tok, 2, false, |x| v.push(x));
            assert_eq!(
                v,
                [
                    (violation::RAN_AFTER_RETURN, 2, id),
                    (violation::WRONG_CPU, 2, id)
                ]
            );
        });
    }

    #[test]
    fn an_async_call_that_never_ran_is_lost_at_the_phase_end() {
        with_cpus(70, || {
            let t = RequestTable::<4>::new();
            // CPU 66 lies in the second word.
            let tok = t.begin(&mask(&[1, 66]), false);
            let id = t.id(tok);
            assert_eq!(ran(&t, tok, 1, false), None);
            assert!(ended(&t, tok).is_empty(), "an async caller does not wait");
            assert_eq!(lost(&t), [(violation::LOST, 66, id)]);
            // check_lost freed the slot.
            assert!(lost(&t).is_empty());
        });
    }

    #[test]
    fn a_busy_slot_is_not_reused_and_untracked_tokens_are_harmless() {
        with_cpus(2, || {
            let t = RequestTable::<1>::new();
            let tok = t.begin(&mask(&[1]), true);
            assert_eq!(t.begin(&mask(&[1]), true), 0, "slot still in use");
            assert_eq!(ran(&t, 0, 1, false), None);
            assert!(ended(&t, 0).is_empty());
            assert!(t.is_target(0, 1) && t.payload_visible(0));
            assert_eq!((t.reply(0), t.expected_payload(0)), (None, None));
            // The caller's return alone does not free it: CPU 1 owes a run.
            assert_eq!(ended(&t, tok).len(), 1);
            assert_eq!(t.begin(&mask(&[0]), true), 0);
            assert_eq!(
                ran(&t, tok, 1, false),
                Some((violation::RAN_AFTER_RETURN, 1, t.id(tok)))
            );
            assert_ne!(t.begin(&mask(&[0]), true), 0);
        });
    }

    #[test]
    fn skipped_and_deferred_targets_are_not_expected_at_return() {
        with_cpus(4, || {
            let t = RequestTable::<2>::new();
            let tok = t.begin(&mask(&[1, 2, 3]), true);
            t.skip(tok, &mask(&[3]));
            assert!(!t.is_target(tok, 3));
            t.defer(tok, 2);
            assert_eq!(ran(&t, tok, 1, false), None);
            assert!(ended(&t, tok).is_empty());
            // The deferred run comes after the return, by design.
            assert_eq!(ran(&t, tok, 2, true), None);
            assert!(lost(&t).is_empty());
            // A deferral taken back is expected again.
            let tok = t.begin(&mask(&[2]), true);
            t.defer(tok, 2);
            t.undefer(tok, 2);
            assert_eq!(ended(&t, tok), [(violation::NOT_RUN, 2, t.id(tok))]);
        });
    }

    #[test]
    fn payload_and_reply_round_trip() {
        with_cpus(2, || {
            let t = RequestTable::<2>::new();
            let tok = t.begin(&mask(&[1]), true);
            assert!(!t.payload_visible(tok), "not written yet");
            t.set_payload(tok);
            assert!(t.payload_visible(tok));
            assert_eq!(t.expected_payload(tok), Some(payload_of(t.id(tok))));
            t.set_reply(tok, 42);
            assert_eq!(t.reply(tok), Some(42));
        });
    }

    #[test]
    fn concurrent_callbacks_on_many_cpus_are_each_counted_once() {
        with_cpus(64, || {
            let t = RequestTable::<8>::new();
            let all: Vec<u32> = (0..64).collect();
            for _round in 0..50 {
                let tok = t.begin(&mask(&all), true);
                assert_ne!(tok, 0);
                std::thread::scope(|s| {
                    for chunk in all.chunks(16) {
                        let t = &t;
                        s.spawn(move || {
                            for &c in chunk {
                                assert_eq!(ran(t, tok, c, false), None);
                            }
                        });
                    }
                });
                assert!(ended(&t, tok).is_empty());
            }
            assert!(lost(&t).is_empty());
        });
    }
}
