//! Long-running children (nats-server, clickhouse-server, wrangler + workerd,
//! the relay, the aggregator): each is a [`ChildProcess`] (the same handle
//! the test harness uses) running in its own process group with its output
//! in a log file, is recorded in a process-wide registry, and is stopped by
//! signalling its whole group — on drop, on error and from the
//! Ctrl-C/SIGTERM handler. Nothing started here may outlive xtask; nothing
//! here kills a process it did not start. A service that dies is reported
//! by name with its log's tail.

use anyhow::{Context as _, Result};
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;
use spoor_process::{ChildProcess, Spec};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Process-group ids of the children alive right now.
static LIVE: Mutex<Vec<i32>> = Mutex::new(Vec::new());
/// Set by the interrupt handler, so the main thread does not report the
/// children it is killing as crashed.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// How long a child gets to stop after SIGTERM before its group is SIGKILLed.
const GRACE: Duration = Duration::from_secs(5);

/// On Ctrl-C, SIGTERM or SIGHUP: stop every registered child, then exit 130.
/// Runs on ctrlc's own thread, so it works whatever the main thread is blocked on.
pub fn install_interrupt_handler() -> Result<()> {
    ctrlc::set_handler(|| {
        INTERRUPTED.store(true, Ordering::SeqCst);
        eprintln!("\nxtask: interrupted, stopping everything it started");
        let groups: Vec<i32> = LIVE.lock().map(|g| g.clone()).unwrap_or_default();
        stop_groups(&groups);
        std::process::exit(130);
    })
    .context("installing the Ctrl-C handler")
}

fn stop_groups(groups: &[i32]) {
    for &g in groups {
        let _ = killpg(Pid::from_raw(g), Signal::SIGTERM);
    }
    let deadline = Instant::now() + GRACE;
    while Instant::now() < deadline && groups.iter().any(|&g| group_alive(g)) {
        std::thread::sleep(Duration::from_millis(50));
    }
    for &g in groups {
        let _ = killpg(Pid::from_raw(g), Signal::SIGKILL);
    }
}

/// Whether any process of group `g` still exists. Reaps the leader (our
/// child, pid == pgid) first: an unreaped zombie would count as alive.
fn group_alive(g: i32) -> bool {
    let _ = waitpid(Pid::from_raw(g), Some(WaitPidFlag::WNOHANG));
    killpg(Pid::from_raw(g), None).is_ok()
}

/// Once the interrupt handler runs it stops everything and exits the
/// process: the main thread waits for that instead of reporting the
/// children it kills as crashed.
fn park_if_interrupted() {
    while INTERRUPTED.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// A running child process group.
pub struct Service {
    process: ChildProcess,
}

impl Service {
    /// Starts `cmd` in a new process group, stdout and stderr appended to `log`.
    pub fn start(name: &str, cmd: Command, log: &Path) -> Result<Service> {
        println!("start {name}: {}", crate::sh::display(&cmd));
        println!("      log: {}", log.display());
        let process =
            ChildProcess::new(Spec::from_command(name, &cmd, log).own_group().grace(GRACE));
        // The registry lock is held across spawn so the interrupt handler
        // cannot run between the spawn and the registration.
        let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
        let pid = process.start()?;
        live.push(pid as i32);
        Ok(Service { process })
    }

    /// Fails, naming the service and quoting its log's tail, if it has exited.
    pub fn check_running(&mut self) -> Result<()> {
        park_if_interrupted();
        let checked = self.process.check_running();
        if checked.is_err() {
            park_if_interrupted();
        }
        Ok(checked?)
    }

    /// Polls `ready` until it holds, failing early if the process exits.
    pub fn wait_ready(
        &mut self,
        what: &str,
        timeout: Duration,
        ready: impl FnMut() -> bool,
    ) -> Result<()> {
        park_if_interrupted();
        match self.process.wait_ready(what, timeout, ready) {
            Ok(took) => {
                println!(
                    "      {} ready after {:.1}s",
                    self.process.name(),
                    took.as_secs_f64()
                );
                Ok(())
            }
            Err(e) => {
                park_if_interrupted();
                Err(e.into())
            }
        }
    }

    /// SIGTERM to the group, SIGKILL after the grace period; waits for the child.
    pub fn stop(&mut self) {
        let Some(pgid) = self.process.pid() else {
            return;
        };
        println!("stop  {}", self.process.name());
        self.process.stop();
        if let Ok(mut live) = LIVE.lock() {
            live.retain(|&g| g != pgid as i32);
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Services stopped in reverse start order on drop.
#[derive(Default)]
pub struct Services(Vec<Service>);

impl Services {
    pub fn push(&mut self, s: Service) -> &mut Service {
        self.0.push(s);
        self.0.last_mut().expect("just pushed")
    }

    /// The first service that has exited, as an error.
    pub fn check_all(&mut self) -> Result<()> {
        self.0.iter_mut().try_for_each(Service::check_running)
    }

    pub fn stop_all(&mut self) {
        while let Some(mut s) = self.0.pop() {
            s.stop();
        }
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        self.stop_all();
    }
}
