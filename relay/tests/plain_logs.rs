//! The relay's logs, written to a pipe or a file, carry no ANSI colour
//! codes (the daemon shell turns colour on for terminals only).

use std::process::Command;

#[test]
fn logs_off_a_terminal_have_no_colour_codes() {
    // Nothing listens on port 1: the relay logs its start, fails to reach
    // NATS and exits.
    let out = Command::new(env!("CARGO_BIN_EXE_spoor-relay"))
        .args(["run", "--nats-url", "nats://127.0.0.1:1"])
        .args(["--listen", "127.0.0.1:0"])
        .env_remove("NO_COLOR")
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("serving /healthz and /metrics"), "{text}");
    assert!(text.contains("cannot reach NATS"), "{text}");
    assert!(!text.contains('\u{1b}'), "{text}");
}
