//! What an isolate remembers between requests: its counters and its rate
//! limit buckets. Both are per isolate (Workers run many isolates, each
//! with its own memory), which /metrics and the docs say.
//!
//! wasm32 in workerd is single-threaded, so a `thread_local` `RefCell` is
//! the whole synchronisation. A borrow is never held across an `.await`:
//! every access goes through the closures below.

use std::cell::RefCell;

use spoor_core::counters::EdgeCounters;
use spoor_core::ratelimit::TokenBuckets;

thread_local! {
    static COUNTERS: RefCell<EdgeCounters> = RefCell::new(EdgeCounters::default());
    static BUCKETS: RefCell<TokenBuckets> = RefCell::new(TokenBuckets::default());
}

pub fn count<R>(f: impl FnOnce(&mut EdgeCounters) -> R) -> R {
    COUNTERS.with(|c| f(&mut c.borrow_mut()))
}

pub fn buckets<R>(f: impl FnOnce(&mut TokenBuckets) -> R) -> R {
    BUCKETS.with(|b| f(&mut b.borrow_mut()))
}
