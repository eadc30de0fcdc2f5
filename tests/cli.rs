//! The command line as a user meets it: help, bad config, print-config.

use std::process::Command;

fn pollgate(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pollgate"))
        .args(args)
        .env_remove("POLLGATE_PUBLISH_TOKEN")
        .output()
        .expect("run pollgate")
}

#[test]
fn help_explains_every_contract_flag() {
    let out = pollgate(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--internal-listen",
        "--upstream",
        "--route",
        "--version-header",
        "--publish-token",
        "--admin-token",
        "--max-age",
        "--upstream-max-inflight",
        "--peer",
        "--node-id",
        "--cluster-key",
        "--data-dir",
        "--config",
        "--print-config",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}

#[test]
fn every_bad_value_is_reported_at_once_with_exit_64() {
    let out = pollgate(&[
        "--max-age",
        "soon",
        "--listen",
        "nowhere",
        "--upstream-max-inflight",
        "0",
    ]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in ["max_age", "listen", "upstream_max_inflight"] {
        assert!(err.contains(key), "stderr names {key}: {err}");
    }
}

#[test]
fn a_bad_route_template_is_a_config_error() {
    let out = pollgate(&["--route", "/projects/{nokey}/x"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("route"));
}

#[test]
fn env_and_file_layers_show_in_print_config() {
    let dir = std::env::temp_dir().join(format!("pollgate-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("pg.toml");
    std::fs::write(&file, "max_age = \"30s\"\nupstream_max_inflight = 9\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pollgate"))
        .args([
            "--config",
            file.to_str().unwrap(),
            "--print-config",
            "--upstream-max-inflight",
            "7",
        ])
        .env("POLLGATE_MAX_AGE", "45s")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let toml = String::from_utf8_lossy(&out.stdout);
    assert!(toml.contains("max_age = \"45s\""), "env beats file: {toml}");
    assert!(
        toml.contains("upstream_max_inflight = 7"),
        "flag beats file: {toml}"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn an_unknown_flag_or_file_key_is_refused() {
    assert_eq!(pollgate(&["--no-such-flag"]).status.code(), Some(64));
    let file = std::env::temp_dir().join(format!("pollgate-cli-bad-{}.toml", std::process::id()));
    std::fs::write(&file, "max_agee = \"1s\"\n").unwrap();
    let out = pollgate(&["--config", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("max_age"),
        "suggests the near key"
    );
    std::fs::remove_file(file).ok();
}

#[test]
fn an_unknown_flag_is_reported_with_the_other_errors() {
    let out = pollgate(&["--bogus", "--listen", "nothost"]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("'--bogus'"), "names the unknown flag: {err}");
    assert!(
        err.contains("listen: \"nothost\""),
        "and the bad value: {err}"
    );
}

#[test]
fn print_config_writes_as_the_readme_and_loads_back() {
    let first = pollgate(&["--print-config", "--grace-period", "2m"]);
    assert!(first.status.success());
    let toml = String::from_utf8_lossy(&first.stdout);
    for line in [
        "max_age = \"60s\"",
        "grace_period = \"120s\"",
        "version_header = \"X-Pollgate-Version\"",
    ] {
        assert!(toml.contains(line), "{line} missing from:\n{toml}");
    }
    let file = std::env::temp_dir().join(format!("pollgate-cli-print-{}.toml", std::process::id()));
    std::fs::write(&file, toml.as_bytes()).unwrap();
    let again = pollgate(&["--config", file.to_str().unwrap(), "--print-config"]);
    std::fs::remove_file(&file).ok();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&again.stdout), toml);
}

#[test]
fn a_taken_port_fails_cleanly() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = pollgate(&["--listen", &addr, "--internal-listen", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(69));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&addr));
}

#[test]
fn version_names_the_commit() {
    let out = pollgate(&["--version"]);
    assert!(out.status.success());
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or("unknown".into(), |o| {
            String::from_utf8_lossy(&o.stdout).trim().to_string()
        });
    let want = format!("pollgate {} (commit {commit})\n", env!("CARGO_PKG_VERSION"));
    assert_eq!(String::from_utf8_lossy(&out.stdout), want);
}

#[test]
fn poll_interval_help_says_when_it_applies() {
    let help = String::from_utf8_lossy(&pollgate(&["--help"]).stdout).into_owned();
    let line = help
        .lines()
        .skip_while(|l| !l.contains("--poll-interval"))
        .take(3)
        .collect::<String>();
    assert!(
        line.contains("push is off or refusing") && line.contains("poll_interval_hint_s"),
        "{line}"
    );
}
