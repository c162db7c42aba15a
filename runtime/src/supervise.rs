//! The task supervisor: one exit path for a daemon's tasks.
//!
//! A daemon spawns its long-running work here, in two kinds:
//! - a *service* ([`Supervisor::spawn_service`]) runs until the stop
//!   signal; if it ends before that, in any way, the daemon stops;
//! - a *task* ([`Supervisor::spawn`]) may finish its job and end (a replay
//!   at start, a loop that has nothing to do); only an error or a panic
//!   stops the daemon.
//!
//! Every one of them watches [`Supervisor::stop_signal`]. The daemon waits
//! on [`Supervisor::next_exit`] beside its own work (or on
//! [`Supervisor::run_until`] when it has none), and on the way out calls
//! [`Supervisor::stop`], which raises the stop signal and waits for every
//! task to end. The first exit is returned once, as a [`TaskExit`], for the
//! daemon to report; the tasks' own logs say the rest.

use std::collections::HashMap;
use std::future::Future;

use tokio::sync::watch;
use tokio::task::{Id, JoinSet};

/// Why a supervised task stopped the daemon.
#[derive(Debug, thiserror::Error)]
pub enum TaskExit<E> {
    #[error("{task} failed: {error}")]
    Failed { task: &'static str, error: E },
    #[error("{task} panicked")]
    Panicked { task: &'static str },
    #[error("{task} ended before the daemon was stopped")]
    Ended { task: &'static str },
}

/// What a supervised future may return: nothing, or a result.
pub trait TaskOutput<E> {
    fn into_result(self) -> Result<(), E>;
}

impl<E> TaskOutput<E> for () {
    fn into_result(self) -> Result<(), E> {
        Ok(())
    }
}

impl<E> TaskOutput<E> for Result<(), E> {
    fn into_result(self) -> Result<(), E> {
        self
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Service,
    Task,
}

/// A daemon's tasks and their shared stop signal.
pub struct Supervisor<E> {
    tasks: JoinSet<Result<(), E>>,
    names: HashMap<Id, (&'static str, Kind)>,
    stop: watch::Sender<bool>,
}

impl<E: Send + 'static> Default for Supervisor<E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E: Send + 'static> Supervisor<E> {
    pub fn new() -> Self {
        Supervisor {
            tasks: JoinSet::new(),
            names: HashMap::new(),
            stop: watch::channel(false).0,
        }
    }

    /// Turns true when the daemon stops; every task watches it.
    pub fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Spawns work that runs until the stop signal.
    pub fn spawn_service<O: TaskOutput<E>>(
        &mut self,
        name: &'static str,
        work: impl Future<Output = O> + Send + 'static,
    ) {
        self.start(name, Kind::Service, work);
    }

    /// Spawns work that may end by itself; only a failure stops the daemon.
    pub fn spawn<O: TaskOutput<E>>(
        &mut self,
        name: &'static str,
        work: impl Future<Output = O> + Send + 'static,
    ) {
        self.start(name, Kind::Task, work);
    }

    fn start<O: TaskOutput<E>>(
        &mut self,
        name: &'static str,
        kind: Kind,
        work: impl Future<Output = O> + Send + 'static,
    ) {
        let handle = self.tasks.spawn(async move { work.await.into_result() });
        self.names.insert(handle.id(), (name, kind));
    }

    /// Waits until a task stops the daemon (a service ended, a task failed,
    /// anything panicked) and says why. Never resolves while all is well;
    /// cancel-safe, so it can sit in a `select!` beside the daemon's work.
    pub async fn next_exit(&mut self) -> TaskExit<E> {
        loop {
            let Some(joined) = self.tasks.join_next_with_id().await else {
                return std::future::pending().await;
            };
            if let Some(exit) = self.exit_of(joined, false) {
                return exit;
            }
        }
    }

    /// Raises the stop signal, waits for every task to end, and returns the
    /// first failure among them (a service ending now is no failure).
    pub async fn stop(mut self) -> Option<TaskExit<E>> {
        let _ = self.stop.send(true);
        let mut first = None;
        while let Some(joined) = self.tasks.join_next_with_id().await {
            if let Some(exit) = self.exit_of(joined, true) {
                first.get_or_insert(exit);
            }
        }
        first
    }

    /// Waits for `shutdown` or the first exit, then [`Supervisor::stop`]s:
    /// for a daemon whose work all runs in supervised tasks.
    pub async fn run_until(
        mut self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), TaskExit<E>> {
        let exit = tokio::select! {
            () = shutdown => None,
            exit = self.next_exit() => Some(exit),
        };
        let late = self.stop().await;
        match exit.or(late) {
            Some(exit) => Err(exit),
            None => Ok(()),
        }
    }

    fn exit_of(
        &mut self,
        joined: Result<(Id, Result<(), E>), tokio::task::JoinError>,
        stopping: bool,
    ) -> Option<TaskExit<E>> {
        let (id, result) = match joined {
            Ok((id, result)) => (id, Ok(result)),
            Err(e) => (e.id(), Err(e)),
        };
        let (task, kind) = self.names.remove(&id).unwrap_or(("a task", Kind::Task));
        match result {
            Ok(Ok(())) if kind == Kind::Service && !stopping => Some(TaskExit::Ended { task }),
            Ok(Ok(())) => None,
            Ok(Err(error)) => Some(TaskExit::Failed { task, error }),
            Err(e) if e.is_panic() => Some(TaskExit::Panicked { task }),
            Err(_) if stopping => None,
            Err(_) => Some(TaskExit::Ended { task }),
        }
    }
}

/// Resolves once `stop` is true (or its sender is gone). A function of its
/// own so the watch guard is dropped before the caller's next await.
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn until_stopped(sup: &Supervisor<String>) -> impl Future<Output = ()> + Send + 'static {
        let mut stop = sup.stop_signal();
        async move { stopped(&mut stop).await }
    }

    #[tokio::test]
    async fn a_finished_task_is_fine_and_a_shutdown_stops_everything() {
        let mut sup = Supervisor::<String>::new();
        sup.spawn("replay", async {});
        let service = until_stopped(&sup);
        sup.spawn_service("http", service);
        let result = sup
            .run_until(tokio::time::sleep(Duration::from_millis(50)))
            .await;
        assert!(result.is_ok(), "{result:?}");
    }

    #[tokio::test]
    async fn the_first_failure_stops_the_others_and_is_reported_once() {
        let mut sup = Supervisor::<String>::new();
        let service = until_stopped(&sup);
        sup.spawn_service("http", service);
        sup.spawn("follower", async { Err::<(), _>("gone".to_string()) });
        let exit = sup.run_until(std::future::pending()).await.unwrap_err();
        assert_eq!(exit.to_string(), "follower failed: gone");
    }

    #[tokio::test]
    async fn a_service_that_ends_early_or_a_panic_is_an_exit() {
        let mut sup = Supervisor::<String>::new();
        sup.spawn_service("lag poller", async {});
        let exit = sup.run_until(std::future::pending()).await.unwrap_err();
        assert!(matches!(exit, TaskExit::Ended { task: "lag poller" }));

        let mut sup = Supervisor::<String>::new();
        sup.spawn("ring", async {
            if true {
                panic!("boom");
            }
        });
        let exit = sup.run_until(std::future::pending()).await.unwrap_err();
        assert!(matches!(exit, TaskExit::Panicked { task: "ring" }));
    }
}
