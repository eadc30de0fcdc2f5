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
    let mut child = Command::new("script")
        .args(["-qec", &make, "/dev/null"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("POLLGATE_LISTEN", &public)
        .env("POLLGATE_INTERNAL_LISTEN", &internal)
        .env("POLLGATE_UPSTREAM", format!("http://{up}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
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
