//! `make run` in a terminal stopped with Ctrl-C: a clean exit 0 for make,
//! pollgate and the demo upstream. The terminal is a real pty (`script`
//! from bsdutils); Ctrl-C is the byte 0x03 typed into it, so the kernel
//! sends SIGINT to the terminal's foreground process group as for a user.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// `script` and everything started in its terminal, marked by `MARK` in
/// their environment; dropped (say, by a failed assertion), all of them are
/// killed, so a broken Ctrl-C leaves no demo running.
struct Terminal(std::process::Child, &'static str);

// Not `POLLGATE_*`: pollgate refuses variables of its prefix it does not know.
const MARK: &str = "PG_MAKE_RUN_TEST";

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let mark = format!("{MARK}={}", mark_value(self.1));
        for pid in marked(mark.as_bytes()) {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
        }
    }
}

/// This test process's mark for the run named `run`: each test kills only
/// what it started (the tests run in parallel).
fn mark_value(run: &str) -> String {
    format!("{}-{run}", std::process::id())
}

/// Processes whose environment holds `mark` (as `NAME=value`).
fn marked(mark: &[u8]) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
        .filter(|pid| {
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            env.split(|b| *b == 0).any(|kv| kv == mark)
        })
        .collect()
}

#[test]
fn ctrl_c_stops_make_run_with_exit_0() {
    let tools = [("script", "bsdutils"), ("make", "make"), ("curl", "curl")];
    if !tools
        .iter()
        .all(|(t, p)| common::tool::require(t, p).is_some())
    {
        return;
    }
    let debug = Path::new(env!("CARGO_BIN_EXE_pollgate")).parent().unwrap();
    assert!(
        debug.join("examples/demo_upstream").exists(),
        "cargo test builds the examples"
    );
    let (up, public, internal) = (free_addr(), free_addr(), free_addr());
    // The debug binaries instead of a release build (`-o build-demo`), and
    // free ports: pollgate reads them from the environment.
    let make = format!(
        "make --no-print-directory -o build-demo run RELEASE={} DEMO_UPSTREAM={up} DEMO_PUBLIC={public} DEMO_INTERNAL={internal}",
        debug.display()
    );
    let mut child = Terminal(
        Command::new("script")
            .args(["-qec", &make, "/dev/null"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("POLLGATE_LISTEN", &public)
            .env("POLLGATE_INTERNAL_LISTEN", &internal)
            .env("POLLGATE_UPSTREAM", format!("http://{up}"))
            .env(MARK, mark_value("ctrl-c"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        "ctrl-c",
    );
    let child = &mut child.0;
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|l: &String| l.contains("Ctrl-C stops both"))
    {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the demo started");
        seen.push(line);
    }
    child.stdin.as_mut().unwrap().write_all(b"\x03").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "make run did not stop: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    seen.extend(rx.try_iter());
    let out = seen.join("\n");
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(out.contains("stopped."), "{out}");
    assert!(
        !out.contains("Interrupt") && !out.contains("Error"),
        "{out}"
    );
    // Both exited cleanly: pollgate logs its drain, and nothing still listens.
    assert!(out.contains("pollgate stopped"), "{out}");
    assert!(
        std::net::TcpStream::connect(&internal).is_err(),
        "pollgate still running"
    );
    assert!(
        std::net::TcpStream::connect(&up).is_err(),
        "demo upstream still running"
    );
}

/// In the background (no terminal), killing the make process with SIGTERM
/// stops the demo too: make does not pass the signal on, so `run-demo.sh`
/// watches its parent. Before, make died alone and left both running.
#[test]
fn sigterm_to_a_background_make_run_stops_the_demo() {
    let tools = [("make", "make"), ("curl", "curl")];
    if !tools
        .iter()
        .all(|(t, p)| common::tool::require(t, p).is_some())
    {
        return;
    }
    let debug = Path::new(env!("CARGO_BIN_EXE_pollgate")).parent().unwrap();
    let (up, public, internal) = (free_addr(), free_addr(), free_addr());
    let mut make = Terminal(
        Command::new("make")
            .args(["--no-print-directory", "-o", "build-demo", "run"])
            .arg(format!("RELEASE={}", debug.display()))
            .arg(format!("DEMO_UPSTREAM={up}"))
            .arg(format!("DEMO_PUBLIC={public}"))
            .arg(format!("DEMO_INTERNAL={internal}"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("POLLGATE_LISTEN", &public)
            .env("POLLGATE_INTERNAL_LISTEN", &internal)
            .env("POLLGATE_UPSTREAM", format!("http://{up}"))
            .env(MARK, mark_value("sigterm"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        "sigterm",
    );
    let stdout = make.0.stdout.take().unwrap();
    let started = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.contains("Ctrl-C stops both"));
    assert!(started, "the demo started");
    let pid = make.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let _ = make.0.wait();
    let stopped = || {
        std::net::TcpStream::connect(&internal).is_err()
            && std::net::TcpStream::connect(&up).is_err()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !stopped() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        stopped(),
        "pollgate or the demo upstream still running after make died"
    );
}
