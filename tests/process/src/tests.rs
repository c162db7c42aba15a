use super::*;

fn sh(dir: &Path, script: &str) -> Spec {
    Spec::new("sh", "/bin/sh", dir.join("sh.log"))
        .args(["-c", script])
        .grace(Duration::from_secs(5))
}

#[test]
fn start_stop_and_restart_keep_one_log() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ready");
    let p = ChildProcess::new(sh(
        dir.path(),
        &format!("echo started; touch {}; exec sleep 30", marker.display()),
    ));
    p.start_ready("marker file", Duration::from_secs(10), || marker.exists())
        .unwrap();
    assert!(p.is_running());
    p.check_running().unwrap();
    p.stop();
    assert!(!p.is_running());
    assert!(p.pid().is_none());
    std::fs::remove_file(&marker).unwrap();
    p.restart("marker file", Duration::from_secs(10), || marker.exists())
        .unwrap();
    assert!(p.is_running());
    p.kill();
    assert!(!p.is_running());
    assert_eq!(p.log_tail(10), "started\nstarted");
}

#[test]
fn a_child_that_exits_during_start_up_fails_with_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let p = ChildProcess::new(sh(dir.path(), "echo 'bad flag' >&2; exit 3"));
    let err = p
        .start_ready("never", Duration::from_secs(10), || false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("sh exited during start-up"), "{err}");
    assert!(
        err.contains("last lines of") && err.contains("bad flag"),
        "{err}"
    );
}

#[test]
fn a_child_that_is_never_ready_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let p = ChildProcess::new(sh(dir.path(), "exec sleep 30"));
    let err = p
        .start_ready("never", Duration::from_millis(200), || false)
        .unwrap_err();
    assert!(matches!(err, ProcessError::NotReady { .. }), "{err}");
    assert!(!p.is_running());
}

#[test]
fn a_crash_is_reported_with_the_log_tail() {
    let dir = tempfile::tempdir().unwrap();
    let p = ChildProcess::new(sh(dir.path(), "echo up; exec sleep 30"));
    p.start().unwrap();
    p.wait_ready("echo", Duration::from_secs(10), || p.log_tail(1) == "up")
        .unwrap();
    kill(Pid::from_raw(p.pid().unwrap() as i32), Signal::SIGKILL).unwrap();
    let err = loop {
        match p.check_running() {
            Ok(()) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => break e.to_string(),
        }
    };
    assert!(err.starts_with("sh exited (signal: 9"), "{err}");
    assert!(err.ends_with(":\nup"), "{err}");
}

#[test]
fn stop_reaches_the_whole_group_and_waits_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("grandchild");
    // The shell ignores SIGTERM; its background child does not.
    let p = ChildProcess::new(
        sh(
            dir.path(),
            &format!(
                "sleep 30 & echo $! > {}; trap '' TERM; wait",
                pid_file.display()
            ),
        )
        .own_group()
        .grace(Duration::from_millis(500)),
    );
    p.start_ready("pid file", Duration::from_secs(10), || {
        std::fs::read_to_string(&pid_file).is_ok_and(|s| s.ends_with('\n'))
    })
    .unwrap();
    let grandchild: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    p.stop();
    assert!(!p.is_running());
    // The group is gone: the grandchild got SIGTERM (or SIGKILL after the grace).
    let deadline = Instant::now() + Duration::from_secs(5);
    while kill(Pid::from_raw(grandchild), None).is_ok() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(kill(Pid::from_raw(grandchild), None).is_err());
}

#[test]
fn a_missing_program_is_a_spawn_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let p = ChildProcess::new(Spec::new(
        "ghost",
        dir.path().join("no-such-binary"),
        dir.path().join("ghost.log"),
    ));
    let err = p.start().unwrap_err().to_string();
    assert!(err.starts_with("starting ghost ("), "{err}");
}

#[test]
fn display_quotes_what_a_shell_would_split() {
    let spec = Spec::new("x", "/bin/echo", "/dev/null").args(["a b", "c", "it's"]);
    assert_eq!(spec.display(), r"/bin/echo 'a b' c 'it'\''s'");
}

#[test]
fn a_spec_from_a_command_runs_that_command() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", "echo \"$GREETING $(pwd)\"; exec sleep 30"])
        .env("GREETING", "hello")
        .current_dir(dir.path());
    let p = ChildProcess::new(Spec::from_command("sh", &cmd, dir.path().join("log")));
    let want = format!("hello {}", dir.path().display());
    p.start_ready("greeting", Duration::from_secs(10), || {
        p.log_tail(1) == want
    })
    .unwrap();
}

#[test]
fn tail_keeps_the_last_lines() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("log");
    std::fs::write(&f, "1\n2\n3\n").unwrap();
    assert_eq!(tail(&f, 2), "2\n3");
    assert_eq!(tail(&f, 10), "1\n2\n3");
    assert_eq!(tail(&dir.path().join("none"), 3), "");
}
