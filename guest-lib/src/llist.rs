//! Linux's lock-free list (`include/linux/llist.h`), the shape of the
//! cross-call queue: any CPU pushes one node at a time, the owner takes the
//! whole list at once. A push says whether the list was empty, which is how
//! a sender knows that it, and only it, owes the target an IPI: every
//! empty-to-non-empty transition is matched by exactly one drain.
//!
//! The list is intrusive (a node carries its own [`Link`]) so that a
//! queued request costs no allocation, and the nodes may live anywhere (a
//! per-CPU array, a waiter's stack). Pushing is `unsafe`: the pusher
//! promises the node stays valid and its link untouched until a drain has
//! handed it back; from then on the drained [`Chain`] is private to the
//! taker, which walks it with safe calls that read a node's link before
//! handing the node out (a consumer may release the node, e.g. unlock it,
//! after which its owner reuses the link at once).

use core::cell::UnsafeCell;
use core::marker::PhantomData;
use core::ptr;
use core::sync::atomic::{AtomicPtr, Ordering};

/// A node's link to the next node (only the list and the chain touch it).
pub struct Link<T>(UnsafeCell<*mut T>);

impl<T> Link<T> {
    /// An unlinked link.
    pub const fn new() -> Self {
        Link(UnsafeCell::new(ptr::null_mut()))
    }
}

impl<T> Default for Link<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// A type that can sit in an [`Llist`].
///
/// # Safety
/// [`Node::link`] must return the same field of `self` every time, used by
/// nothing but the lists this crate provides.
pub unsafe trait Node: Sized {
    /// The node's link field.
    fn link(&self) -> &Link<Self>;
}

/// The next node after `n` (null: the end).
fn next_of<T: Node>(n: *mut T) -> *mut T {
    // SAFETY: `n` is a node of a chain (valid per the push contract), and
    // the chain's owner is the only one touching its link.
    unsafe { *(*n).link().0.get() }
}

/// Sets `n`'s link to `next`.
fn set_next<T: Node>(n: *mut T, next: *mut T) {
    // SAFETY: as in `next_of`.
    unsafe { *(*n).link().0.get() = next };
}

/// The list head (`struct llist_head`).
pub struct Llist<T: Node> {
    head: AtomicPtr<T>,
}

impl<T: Node> Llist<T> {
    /// An empty list.
    pub const fn new() -> Self {
        Llist {
            head: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// `llist_add()`: pushes `node`; true if the list was empty (the push
    /// that owes the owner a wake-up).
    ///
    /// # Safety
    /// `node` is in no list or chain, stays valid, and nobody but this
    /// module touches its link until a [`Llist::take_all`] has returned it
    /// and the taker's walk has handed it out.
    pub unsafe fn push(&self, node: &T) -> bool {
        let me = node as *const T as *mut T;
        let mut old = self.head.load(Ordering::Relaxed);
        loop {
            // The node is not visible to anyone else yet (caller's promise).
            set_next(me, old);
            // Release: the node's fields before a taker can see the node.
            match self
                .head
                .compare_exchange_weak(old, me, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => return old.is_null(),
                Err(now) => old = now,
            }
        }
    }

    /// Whether the list is empty now.
    pub fn is_empty(&self) -> bool {
        self.head.load(Ordering::Acquire).is_null()
    }

    /// `llist_del_all()`: takes every node, newest first.
    pub fn take_all(&self) -> Chain<'_, T> {
        // Acquire: pairs with the Release push, so the taker sees every
        // drained node's fields.
        Chain {
            head: self.head.swap(ptr::null_mut(), Ordering::Acquire),
            _list: PhantomData,
        }
    }
}

impl<T: Node> Default for Llist<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// Nodes taken off an [`Llist`], private to the taker until each is handed
/// out by [`Chain::take_where`] or [`Chain::for_each`].
pub struct Chain<'a, T: Node> {
    head: *mut T,
    _list: PhantomData<&'a Llist<T>>,
}

impl<T: Node> Chain<'_, T> {
    /// Whether the chain holds no node.
    pub fn is_empty(&self) -> bool {
        self.head.is_null()
    }

    /// `llist_reverse_order()`: newest first becomes push order.
    pub fn reverse(mut self) -> Self {
        let mut prev = ptr::null_mut();
        while !self.head.is_null() {
            let next = next_of(self.head);
            set_next(self.head, prev);
            prev = self.head;
            self.head = next;
        }
        self.head = prev;
        self
    }

    /// Unlinks every node for which `pred` holds, in order, and hands each
    /// to `f` once unlinked (so `f` may release it); the others stay, in
    /// order. Returns how many were handed out.
    pub fn take_where(&mut self, mut pred: impl FnMut(&T) -> bool, mut f: impl FnMut(&T)) -> u64 {
        let mut n = 0;
        let mut prev: *mut T = ptr::null_mut();
        let mut cur = self.head;
        while !cur.is_null() {
            let next = next_of(cur);
            // SAFETY: `cur` is a node of this chain (valid until handed out).
            let node = unsafe { &*cur };
            if pred(node) {
                if prev.is_null() {
                    self.head = next;
                } else {
                    set_next(prev, next);
                }
                f(node);
                n += 1;
            } else {
                prev = cur;
            }
            cur = next;
        }
        n
    }

    /// Hands every node to `f` in order, reading its link first (`f` may
    /// release it: `llist_for_each_entry_safe`). Returns how many.
    pub fn for_each(self, mut f: impl FnMut(&T)) -> u64 {
        let mut n = 0;
        let mut cur = self.head;
        while !cur.is_null() {
            let next = next_of(cur);
            // SAFETY: as in take_where.
            f(unsafe { &*cur });
            n += 1;
            cur = next;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};
    use std::sync::Arc;
    use std::vec::Vec;

    struct Item {
        link: Link<Item>,
        id: u32,
        seen: AtomicU32,
        busy: AtomicBool,
    }

    // SAFETY: `link` is the field, used only by the list.
    unsafe impl Node for Item {
        fn link(&self) -> &Link<Item> {
            &self.link
        }
    }

    // SAFETY: `link` is handed over through the list's atomics only.
    unsafe impl Sync for Item {}
    // SAFETY: as for Sync; the raw link is the only non-Send field.
    unsafe impl Send for Item {}

    fn items(n: u32) -> Vec<Item> {
        (0..n)
            .map(|id| Item {
                link: Link::new(),
                id,
                seen: AtomicU32::new(0),
                busy: AtomicBool::new(false),
            })
            .collect()
    }

    fn ids(chain: Chain<'_, Item>) -> Vec<u32> {
        let mut out = Vec::new();
        chain.for_each(|i| out.push(i.id));
        out
    }

    #[test]
    fn push_reports_only_the_empty_to_non_empty_transition() {
        let list = Llist::new();
        let v = items(3);
        // SAFETY: the items outlive the list's use and sit in one list.
        let firsts: Vec<bool> = v.iter().map(|i| unsafe { list.push(i) }).collect();
        assert_eq!(firsts, [true, false, false]);
        assert!(!list.is_empty());
        assert_eq!(ids(list.take_all()), [2, 1, 0], "newest first");
        assert!(list.is_empty());
        // SAFETY: as above; every item was handed back by the walk.
        assert!(unsafe { list.push(&v[1]) }, "empty again after the drain");
    }

    #[test]
    fn reverse_gives_push_order_and_survives_empty_and_single() {
        let list: Llist<Item> = Llist::new();
        assert!(list.take_all().reverse().is_empty());
        let v = items(5);
        // SAFETY: as in the first test.
        unsafe { list.push(&v[0]) };
        assert_eq!(ids(list.take_all().reverse()), [0]);
        for i in &v {
            // SAFETY: as in the first test.
            unsafe { list.push(i) };
        }
        assert_eq!(ids(list.take_all().reverse()), [0, 1, 2, 3, 4]);
    }

    #[test]
    fn take_where_unlinks_matches_in_order_and_keeps_the_rest() {
        let list = Llist::new();
        let v = items(7);
        for i in &v {
            // SAFETY: as in the first test.
            unsafe { list.push(i) };
        }
        let mut chain = list.take_all().reverse();
        let mut taken = Vec::new();
        // Head, middle and tail matches (ids 0, 3, 6) all unlink cleanly.
        let n = chain.take_where(|i| i.id % 3 == 0, |i| taken.push(i.id));
        assert_eq!((n, taken), (3, vec![0, 3, 6]));
        assert_eq!(ids(chain), [1, 2, 4, 5]);
    }

    #[test]
    fn a_consumer_may_reuse_the_node_it_was_handed() {
        // As a csd's owner re-queues it once it is unlocked: the walk must
        // have read the link before handing the node out.
        let (list, again) = (Llist::new(), Llist::new());
        let v = items(4);
        for i in &v {
            // SAFETY: as in the first test.
            unsafe { list.push(i) };
        }
        let n = list.take_all().reverse().for_each(|i| {
            // SAFETY: handed out, so the node is ours to queue again.
            unsafe { again.push(i) };
        });
        assert_eq!(n, 4);
        assert_eq!(ids(again.take_all()), [3, 2, 1, 0]);
    }

    #[test]
    fn concurrent_pushes_are_each_drained_once_and_no_wakeup_is_lost() {
        const THREADS: u32 = 4;
        const EACH: u32 = 2000;
        let pool: Arc<Vec<Item>> = Arc::new(items(THREADS * EACH));
        let list: Arc<Llist<Item>> = Arc::new(Llist::new());
        let wakeups = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicU32::new(0));
        let pushers: Vec<_> = (0..THREADS)
            .map(|t| {
                let (pool, list, wakeups, done) =
                    (pool.clone(), list.clone(), wakeups.clone(), done.clone());
                std::thread::spawn(move || {
                    for i in &pool[(t * EACH) as usize..((t + 1) * EACH) as usize] {
                        i.busy.store(true, Ordering::Relaxed);
                        // SAFETY: each item is pushed once and outlives the
                        // test (the pool is shared by Arc).
                        if unsafe { list.push(i) } {
                            wakeups.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    done.fetch_add(1, Ordering::Release);
                })
            })
            .collect();
        let mut drains = 0u64;
        loop {
            let finished = done.load(Ordering::Acquire) == THREADS;
            let chain = list.take_all();
            if !chain.is_empty() {
                drains += 1;
            }
            chain.for_each(|i| {
                assert!(
                    i.busy.load(Ordering::Relaxed),
                    "the push's write is visible"
                );
                i.seen.fetch_add(1, Ordering::Relaxed);
            });
            if finished && list.is_empty() {
                break;
            }
        }
        for p in pushers {
            p.join().expect("a pusher");
        }
        assert!(pool.iter().all(|i| i.seen.load(Ordering::Relaxed) == 1));
        // Every empty-to-non-empty push is answered by exactly one drain
        // that found something: the IPI rule loses no queue and sends no
        // IPI for nothing.
        assert_eq!(wakeups.load(Ordering::Relaxed), drains);
    }
}
