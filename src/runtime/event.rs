//! A shard-local event tasks wait on instead of sleeping in a loop: "the backlog drained",
//! "the last connection left", "the shard's state changed".
//!
//! Waiters give a condition; [`Event::notify`] wakes them all and each re-checks its own.
//! Single-threaded (`RefCell`), like everything a shard's tasks share.

use std::cell::RefCell;
use std::future::poll_fn;
use std::task::{Poll, Waker};

#[derive(Default)]
pub(crate) struct Event {
    waiters: RefCell<Vec<Waker>>,
}

impl Event {
    /// Resolves once `done` holds, re-checked whenever the event is notified.
    pub(crate) async fn until(&self, mut done: impl FnMut() -> bool) {
        poll_fn(|cx| {
            if done() {
                return Poll::Ready(());
            }
            let mut waiters = self.waiters.borrow_mut();
            if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
                waiters.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }

    /// Wakes every waiter.
    pub(crate) fn notify(&self) {
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for w in waiters {
            w.wake();
        }
    }
}
