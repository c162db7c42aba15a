//! The caller's clock. This crate never reads time itself (the edge has no
//! `Instant`, and tests want real time): every bound on a network wait is a
//! sleep the caller's [`Timer`] provides, raced against the wait.

use std::future::Future;

/// Something that can sleep: `worker::Delay` on the edge,
/// `tokio::time::sleep` natively. Any `Fn(u64) -> impl Future<Output = ()>`
/// is a `Timer`.
pub trait Timer {
    type Sleep: Future<Output = ()>;
    /// A future that completes after `ms` milliseconds.
    fn sleep(&self, ms: u64) -> Self::Sleep;
}

impl<F, Fut> Timer for F
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = ()>,
{
    type Sleep = Fut;
    fn sleep(&self, ms: u64) -> Fut {
        self(ms)
    }
}
