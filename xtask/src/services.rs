//! Long-running children (nats-server, clickhouse-server, wrangler + workerd,
//! the relay): each runs in its own process group with its output in a log
//! file, is recorded in a process-wide registry, and is stopped by killing
//! its whole group — on drop, on error and from the Ctrl-C/SIGTERM handler.
//! Nothing started here may outlive xtask; nothing here kills a process it
//! did not start.

use anyhow::{bail, Context as _, Result};
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;
use std::fs::File;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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

/// A running child process group.
pub struct Service {
    pub name: String,
    child: Child,
    pub log: PathBuf,
    stopped: bool,
}

impl Service {
    /// Starts `cmd` in a new process group, stdout and stderr appended to `log`.
    pub fn start(name: &str, mut cmd: Command, log: &Path) -> Result<Service> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        println!("start {name}: {}", crate::sh::display(&cmd));
        println!("      log: {}", log.display());
        // The registry lock is held across spawn so the interrupt handler
        // cannot run between the spawn and the registration.
        let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        live.push(child.id() as i32);
        Ok(Service {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
            stopped: false,
        })
    }

    /// Fails with the log's tail if the process has exited.
    pub fn check_running(&mut self) -> Result<()> {
        while INTERRUPTED.load(Ordering::SeqCst) {
            // The handler is stopping everything and will exit the process.
            std::thread::sleep(Duration::from_secs(1));
        }
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); last lines of {}:\n{}",
                self.name,
                self.log.display(),
                tail(&self.log, 30)
            );
        }
        Ok(())
    }

    /// Polls `ready` until it holds, failing early if the process exits.
    pub fn wait_ready(
        &mut self,
        what: &str,
        timeout: Duration,
        mut ready: impl FnMut() -> bool,
    ) -> Result<()> {
        let start = Instant::now();
        loop {
            self.check_running()?;
            if ready() {
                println!(
                    "      {} ready after {:.1}s",
                    self.name,
                    start.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            if start.elapsed() > timeout {
                bail!(
                    "{} not ready ({what}) after {timeout:?}; last lines of {}:\n{}",
                    self.name,
                    self.log.display(),
                    tail(&self.log, 30)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM to the group, SIGKILL after the grace period; waits for the child.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let pgid = self.child.id() as i32;
        println!("stop  {}", self.name);
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGTERM);
        let deadline = Instant::now() + GRACE;
        loop {
            let leader_gone = matches!(self.child.try_wait(), Ok(Some(_)) | Err(_));
            if leader_gone && killpg(Pid::from_raw(pgid), None).is_err() {
                break;
            }
            if Instant::now() > deadline {
                let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Ok(mut live) = LIVE.lock() {
            live.retain(|&g| g != pgid);
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

/// The last `n` lines of a log file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
