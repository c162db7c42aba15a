//! One handle for a long-running child process, shared by the test harness
//! (nats-server, clickhouse-server and the relay binary in `spoor-tests`)
//! and by `cargo xtask demo` (every demo service).
//!
//! A [`Spec`] says what to run (program, arguments, environment, working
//! directory), where its stdout and stderr go (one log file, always appended
//! to, so it reads across restarts), whether it gets its own process group
//! (then every signal goes to the whole group, e.g. wrangler and its
//! workerd), whether the kernel kills it when the parent dies
//! ([`spawn_tied`]), and how long a clean stop may take. A [`ChildProcess`]
//! runs a spec: start with a ready check, stop (SIGTERM, then SIGKILL after
//! the grace), kill -9, restart with the same spec (same arguments, same
//! ports, same state), and the log's tail for error messages.
//!
//! Invariants: a handle never signals a process it did not start (a reaped
//! pid may be reused, so a lone child is only signalled while unreaped; a
//! group id stays reserved while any member lives); every child it started
//! is reaped; dropping the handle kills the child. Methods take `&self`, so
//! one handle can be shared by a test that stops a server while clients run.
//! This crate holds the only `unsafe` of the harness (one `pre_exec`).

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// Lines of the log quoted in errors.
pub const LOG_TAIL_LINES: usize = 40;

/// Why a child could not be started or did not become ready.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("opening {}: {source}", path.display())]
    Log { path: PathBuf, source: io::Error },
    #[error("starting {name} ({command}): {source}")]
    Spawn {
        name: String,
        command: String,
        source: io::Error,
    },
    /// `when` is `" during start-up"` when it died before it was ready.
    #[error("{name} exited{when} ({status}); last lines of {}:\n{tail}", log.display())]
    Exited {
        name: String,
        when: &'static str,
        status: ExitStatus,
        log: PathBuf,
        tail: String,
    },
    #[error("{name} was not ready ({what}) after {timeout:?}; last lines of {}:\n{tail}", log.display())]
    NotReady {
        name: String,
        what: String,
        timeout: Duration,
        log: PathBuf,
        tail: String,
    },
    #[error("{name} is not running")]
    NotRunning { name: String },
    #[error("checking on {name}: {source}")]
    Wait { name: String, source: io::Error },
}

/// What to run and how; reused unchanged by every (re)start.
#[derive(Debug, Clone)]
pub struct Spec {
    name: String,
    program: PathBuf,
    args: Vec<OsString>,
    /// Variables set (`Some`) or removed (`None`), in order.
    envs: Vec<(OsString, Option<OsString>)>,
    current_dir: Option<PathBuf>,
    log: PathBuf,
    tail_log: Option<PathBuf>,
    own_group: bool,
    tied: Option<Signal>,
    grace: Duration,
}

impl Spec {
    /// `program`, named `name` in messages, with stdout and stderr appended
    /// to `log`. By default: no own process group, not tied to the parent,
    /// 10 s to stop after SIGTERM.
    pub fn new(
        name: impl Into<String>,
        program: impl Into<PathBuf>,
        log: impl Into<PathBuf>,
    ) -> Spec {
        Spec {
            name: name.into(),
            program: program.into(),
            args: Vec::new(),
            envs: Vec::new(),
            current_dir: None,
            log: log.into(),
            tail_log: None,
            own_group: false,
            tied: None,
            grace: Duration::from_secs(10),
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Spec {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Spec
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Spec {
        self.envs
            .push((key.as_ref().to_owned(), Some(value.as_ref().to_owned())));
        self
    }

    /// The program, arguments, environment changes and working directory
    /// of `cmd` (its stdio settings are not kept: the log takes them).
    pub fn from_command(name: impl Into<String>, cmd: &Command, log: impl Into<PathBuf>) -> Spec {
        let mut spec = Spec::new(name, cmd.get_program(), log).args(cmd.get_args());
        spec.envs = cmd
            .get_envs()
            .map(|(k, v)| (k.to_owned(), v.map(OsStr::to_owned)))
            .collect();
        spec.current_dir = cmd.get_current_dir().map(Path::to_owned);
        spec
    }

    pub fn envs<I, K, V>(mut self, vars: I) -> Spec
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        for (k, v) in vars {
            self = self.env(k, v);
        }
        self
    }

    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Spec {
        self.current_dir = Some(dir.into());
        self
    }

    /// Errors quote this file's tail instead of the log's (for a server
    /// that writes its own error log, like clickhouse-server).
    pub fn tail_log(mut self, path: impl Into<PathBuf>) -> Spec {
        self.tail_log = Some(path.into());
        self
    }

    /// Runs the child in a new process group; stop and kill signal the
    /// whole group, so its own children go too.
    pub fn own_group(mut self) -> Spec {
        self.own_group = true;
        self
    }

    /// The kernel sends the child `signal` when this process dies, however
    /// it dies (see [`spawn_tied`]).
    pub fn tied_to_parent(mut self, signal: Signal) -> Spec {
        self.tied = Some(signal);
        self
    }

    /// How long `stop` waits after SIGTERM before SIGKILL.
    pub fn grace(mut self, grace: Duration) -> Spec {
        self.grace = grace;
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where stdout and stderr go.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The command without its output redirection (for printing, too).
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args);
        for (k, v) in &self.envs {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        if let Some(dir) = &self.current_dir {
            cmd.current_dir(dir);
        }
        cmd
    }

    /// The command line as a shell would read it (environment not shown).
    pub fn display(&self) -> String {
        std::iter::once(self.program.as_os_str())
            .chain(self.args.iter().map(OsString::as_os_str))
            .map(|a| {
                let a = a.to_string_lossy();
                if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '\'' || c == '"')
                {
                    format!("'{}'", a.replace('\'', r"'\''"))
                } else {
                    a.into_owned()
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// A child process run from a [`Spec`]: started, stopped, killed and
/// restarted through `&self`; killed on drop.
#[derive(Debug)]
pub struct ChildProcess {
    spec: Spec,
    child: Mutex<Option<Child>>,
}

impl ChildProcess {
    /// A handle that has not started anything yet.
    pub fn new(spec: Spec) -> ChildProcess {
        ChildProcess {
            spec,
            child: Mutex::new(None),
        }
    }

    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn log_path(&self) -> &Path {
        &self.spec.log
    }

    /// The last `lines` lines of the log (or of the spec's `tail_log`).
    pub fn log_tail(&self, lines: usize) -> String {
        tail(self.tail_path(), lines)
    }

    fn tail_path(&self) -> &Path {
        self.spec.tail_log.as_deref().unwrap_or(&self.spec.log)
    }

    /// The running child's pid (the group id with `own_group`).
    pub fn pid(&self) -> Option<u32> {
        self.lock().as_ref().map(Child::id)
    }

    /// Spawns the child (stopping a previous one first), without waiting
    /// for it to be ready. Returns its pid.
    pub fn start(&self) -> Result<u32, ProcessError> {
        self.stop();
        let out = File::options()
            .create(true)
            .append(true)
            .open(&self.spec.log)
            .map_err(|source| ProcessError::Log {
                path: self.spec.log.clone(),
                source,
            })?;
        let spawn_error = |source| ProcessError::Spawn {
            name: self.spec.name.clone(),
            command: self.spec.display(),
            source,
        };
        let mut cmd = self.spec.command();
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone().map_err(spawn_error)?)
            .stderr(out);
        if self.spec.own_group {
            cmd.process_group(0);
        }
        let child = match self.spec.tied {
            Some(signal) => spawn_tied(cmd, signal),
            None => cmd.spawn(),
        }
        .map_err(spawn_error)?;
        let pid = child.id();
        *self.lock() = Some(child);
        Ok(pid)
    }

    /// Polls `ready` every 50 ms until it holds; fails early with the log's
    /// tail if the child exits, or after `timeout` (the child then keeps
    /// running). Returns how long it took. `what` names the check.
    pub fn wait_ready(
        &self,
        what: &str,
        timeout: Duration,
        mut ready: impl FnMut() -> bool,
    ) -> Result<Duration, ProcessError> {
        let start = Instant::now();
        loop {
            self.check_exited(" during start-up")?;
            if self.lock().is_none() {
                return Err(ProcessError::NotRunning {
                    name: self.spec.name.clone(),
                });
            }
            if ready() {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                return Err(ProcessError::NotReady {
                    name: self.spec.name.clone(),
                    what: what.to_owned(),
                    timeout,
                    log: self.tail_path().to_owned(),
                    tail: self.log_tail(LOG_TAIL_LINES),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `start`, then `wait_ready`; if the child does not become ready it is
    /// killed and the error quotes its log.
    pub fn start_ready(
        &self,
        what: &str,
        timeout: Duration,
        ready: impl FnMut() -> bool,
    ) -> Result<Duration, ProcessError> {
        self.start()?;
        self.wait_ready(what, timeout, ready)
            .inspect_err(|_| self.kill())
    }

    /// Stops the child if it runs, then starts the same spec again (same
    /// arguments, ports and state) and waits until `ready` holds.
    pub fn restart(
        &self,
        what: &str,
        timeout: Duration,
        ready: impl FnMut() -> bool,
    ) -> Result<Duration, ProcessError> {
        self.stop();
        self.start_ready(what, timeout, ready)
    }

    /// The child's exit status once it has exited (None while it runs or
    /// when nothing was started).
    pub fn exit_status(&self) -> Result<Option<ExitStatus>, ProcessError> {
        match self.lock().as_mut() {
            Some(child) => child.try_wait().map_err(|source| ProcessError::Wait {
                name: self.spec.name.clone(),
                source,
            }),
            None => Ok(None),
        }
    }

    /// True while the child runs.
    pub fn is_running(&self) -> bool {
        self.lock()
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// An error naming the child and quoting its log once it has exited.
    pub fn check_running(&self) -> Result<(), ProcessError> {
        self.check_exited("")
    }

    fn check_exited(&self, when: &'static str) -> Result<(), ProcessError> {
        match self.exit_status()? {
            Some(status) => Err(ProcessError::Exited {
                name: self.spec.name.clone(),
                when,
                status,
                log: self.tail_path().to_owned(),
                tail: self.log_tail(LOG_TAIL_LINES),
            }),
            None => Ok(()),
        }
    }

    /// Stops the child cleanly (SIGTERM; SIGKILL after the spec's grace)
    /// and reaps it. A no-op when nothing runs.
    pub fn stop(&self) {
        if let Some(mut child) = self.lock().take() {
            stop_child(&mut child, self.spec.grace, self.spec.own_group);
        }
    }

    /// Kills the child at once (SIGKILL to it, or to its group), like a
    /// crash, and reaps it. A no-op when nothing runs.
    pub fn kill(&self) {
        if let Some(mut child) = self.lock().take() {
            if self.spec.own_group {
                let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            } else {
                // Fails only if the child already exited; wait reaps it either way.
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `n` lines of a log file (empty when it cannot be read).
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// SIGTERM, then SIGKILL if `child` has not exited within `grace`; reaps it.
/// With `group`, signals the child's whole process group (it must have been
/// started with `process_group(0)`) and waits, within the grace, for every
/// member to go.
pub fn stop_child(child: &mut Child, grace: Duration, group: bool) {
    let pid = Pid::from_raw(child.id() as i32);
    let signal = |s: Option<Signal>| {
        if group {
            killpg(pid, s)
        } else {
            kill(pid, s)
        }
    };
    if matches!(child.try_wait(), Ok(Some(_))) {
        if group {
            let _ = signal(Some(Signal::SIGKILL)); // stragglers left by a leader that already exited
        }
        return;
    }
    let _ = signal(Some(Signal::SIGTERM));
    let deadline = Instant::now() + grace;
    let mut exited = false;
    loop {
        exited = exited || matches!(child.try_wait(), Ok(Some(_)) | Err(_));
        // A group id stays reserved while any member (say, workerd under
        // wrangler) lives, so asking it is safe after the leader is reaped.
        let done = exited && (!group || signal(None).is_err());
        if done || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // A reaped pid may be reused, so a lone child is only killed while unreaped.
    if group || !exited {
        let _ = signal(Some(Signal::SIGKILL));
    }
    let _ = child.wait();
}

type SpawnJob = (Command, Signal, mpsc::Sender<io::Result<Child>>);

/// Spawns `cmd` so that the kernel sends it `on_parent_death` when this
/// process dies, however it dies (panic, Ctrl-C, SIGKILL): handles' Drop is
/// not enough on its own, and a shared server in a `static` is never
/// dropped at all.
///
/// PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not
/// the process, and test threads (and tokio's blocking threads) come and go.
/// So every child is forked by one spawner thread that lives as long as the
/// process. To kill a whole process tree, set `process_group(0)` on `cmd`
/// and kill the group.
pub fn spawn_tied(cmd: Command, on_parent_death: Signal) -> io::Result<Child> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnJob>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        std::thread::Builder::new()
            .name("spoor-harness-spawner".into())
            .spawn(move || {
                // Ends only with the process: the static keeps a sender alive.
                for (mut cmd, signal, reply) in rx {
                    let _ = reply.send(spawn_with_pdeathsig(&mut cmd, signal));
                }
            })
            .expect("starting the harness's spawner thread");
        tx
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .send((cmd, on_parent_death, reply_tx))
        .map_err(|_| io::Error::other("the harness's spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("the harness's spawner thread is gone"))?
}

#[allow(unsafe_code)] // pre_exec is unsafe to call; see the SAFETY note.
fn spawn_with_pdeathsig(cmd: &mut Command, signal: Signal) -> io::Result<Child> {
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the forked child before exec and only makes
    // two async-signal-safe system calls (prctl, getppid); it allocates
    // nothing and touches no lock.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(signal).map_err(io::Error::from)?;
            // The parent may have died between fork and prctl; then no signal would come.
            if nix::unistd::getppid() != parent {
                return Err(io::Error::other(
                    "the parent process exited while starting a child",
                ));
            }
            Ok(())
        });
    }
    cmd.spawn()
}

#[cfg(test)]
mod tests;
