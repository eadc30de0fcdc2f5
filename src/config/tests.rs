//! `load` as a whole: layering, errors, help and `--print-config`.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use toml::Value;

use super::cli::{command, flag_names};
use super::keys::{default_texts, KEYS};
use super::parse::upstream_text;
use super::*;

/// Runs `load` without route checking (route.rs is built separately).
fn run(args: &[&str], env: &[(&str, &str)]) -> Result<Cli, LoadError> {
    let args = std::iter::once("pollgate")
        .chain(args.iter().copied())
        .map(OsString::from);
    let env: Vec<_> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    load_inner(args, &env, false)
}

fn ok(args: &[&str], env: &[(&str, &str)]) -> Config {
    match run(args, env) {
        Ok(cli) => cli.config,
        Err(e) => panic!("expected a config, got {e:?}"),
    }
}

fn errs(args: &[&str], env: &[(&str, &str)]) -> Vec<String> {
    match run(args, env) {
        Err(LoadError::Invalid(errs)) => errs,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

/// Exactly one error, containing every one of `parts`.
fn one_error(args: &[&str], env: &[(&str, &str)], parts: &[&str]) {
    let e = errs(args, env);
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(
        parts.iter().all(|p| e[0].contains(p)),
        "{parts:?} not in {e:#?}"
    );
}

/// A TOML file under the temp dir, removed on drop.
struct TempToml(PathBuf);

impl TempToml {
    fn new(text: &str) -> TempToml {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let name = format!("pollgate-config-test-{}-{n}.toml", std::process::id());
        let path = std::env::temp_dir().join(name);
        std::fs::write(&path, text).expect("write temp config");
        TempToml(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 temp path")
    }
}

impl Drop for TempToml {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn no_arguments_gives_the_default() {
    assert_eq!(ok(&[], &[]), Config::default());
    assert!(!run(&[], &[]).unwrap().print_config);
}

#[test]
fn flag_beats_env_beats_file_beats_default() {
    let file = TempToml::new(
        "max_age = \"1s\"\npoll_interval = \"2s\"\ngrace_period = \"3s\"\ncoalesce_wait = \"4s\"\n",
    );
    let env = [
        ("POLLGATE_MAX_AGE", "10s"),
        ("POLLGATE_POLL_INTERVAL", "20s"),
        ("POLLGATE_GRACE_PERIOD", "30s"),
    ];
    let c = ok(&["--config", file.path(), "--max-age", "100s"], &env);
    assert_eq!(c.max_age, secs(100));
    assert_eq!(c.poll_interval, secs(20));
    assert_eq!(c.grace_period, secs(30));
    assert_eq!(c.coalesce_wait, secs(4));
    assert_eq!(c.breaker_open, Config::default().breaker_open);
}

#[test]
fn config_file_from_env_and_flag_beats_it() {
    let a = TempToml::new("max_age = \"1s\"");
    let b = TempToml::new("max_age = \"2s\"");
    assert_eq!(ok(&[], &[("POLLGATE_CONFIG", a.path())]).max_age, secs(1));
    let c = ok(&["--config", b.path()], &[("POLLGATE_CONFIG", a.path())]);
    assert_eq!(c.max_age, secs(2));
}

#[test]
fn lists_come_from_every_layer() {
    let file = TempToml::new("upstream = [\"http://a:1\", \"http://b:2\"]\npeer = \"p:1\"");
    let env = [(
        "POLLGATE_ROUTE",
        "/x/{key}?v={version}, /y/{key}?v={version}",
    )];
    let args = [
        "--config",
        file.path(),
        "--cluster-key",
        "k",
        "--peer",
        "q:2",
        "--peer",
        "r:3",
    ];
    let c = ok(&args, &env);
    assert_eq!(
        c.upstream.iter().map(upstream_text).collect::<Vec<_>>(),
        ["http://a:1", "http://b:2"]
    );
    assert_eq!(c.route, ["/x/{key}?v={version}", "/y/{key}?v={version}"]);
    assert_eq!(c.peer, ["q:2", "r:3"]);
}

#[test]
fn a_higher_layer_replaces_the_list() {
    let file = TempToml::new("upstream = [\"http://a:1\", \"http://b:2\"]");
    let env = [("POLLGATE_UPSTREAM", "http://c:3")];
    let c = ok(&["--config", file.path()], &env);
    assert_eq!(c.upstream, [http::Uri::from_static("http://c:3/")]);
    let c = ok(&["--config", file.path(), "--upstream", "http://d:4"], &env);
    assert_eq!(c.upstream, [http::Uri::from_static("http://d:4/")]);
    let c = ok(
        &["--peer", "a:1", "--cluster-key", "k"],
        &[("POLLGATE_PEER", "")],
    );
    assert_eq!(c.peer, ["a:1"]);
    assert!(ok(&[], &[("POLLGATE_PEER", "")]).peer.is_empty());
}

#[test]
fn every_bad_value_is_reported_at_once() {
    let file = TempToml::new("max_header_size = \"10MiB\"");
    let env = [("POLLGATE_LISTEN", "nope")];
    let e = errs(&["--config", file.path(), "--max-age", "abc"], &env);
    assert_eq!(e.len(), 3, "{e:#?}");
    let has = |parts: &[&str]| e.iter().any(|l| parts.iter().all(|p| l.contains(p)));
    assert!(
        has(&["max_age", "\"abc\"", "--max-age", "duration like 250ms"]),
        "{e:#?}"
    );
    assert!(
        has(&["listen", "\"nope\"", "POLLGATE_LISTEN", "socket address"]),
        "{e:#?}"
    );
    assert!(
        has(&["max_header_size", "\"10MiB\"", file.path(), "1KiB and 1MiB"]),
        "{e:#?}"
    );
}

#[test]
fn the_exact_error_line() {
    let e = errs(&["--max-age", "abc"], &[]);
    assert_eq!(
        e,
        [r#"max_age: "abc" (from --max-age) is not a duration like 250ms, 60s, 1h"#]
    );
}

#[test]
fn a_refused_secret_is_not_quoted_in_the_error() {
    let env = [("POLLGATE_REDIS_URL", "http://app:hunter2@redis:6379")];
    let e = errs(
        &["--publish-token", "hunter2 x", "--cluster-key", "hunter2\t"],
        &env,
    );
    assert_eq!(e.len(), 3, "{e:?}");
    for line in &e {
        assert!(!line.contains("hunter2"), "{line}");
        assert!(line.contains("<secret not shown>"), "{line}");
    }
}

#[test]
fn unknown_flag_is_invalid() {
    let e = errs(&["--max-agee", "1s"], &[]);
    assert_eq!(
        e,
        ["unexpected argument '--max-agee' found; \
          tip: a similar argument exists: '--max-age' (see --help)"]
    );
    assert!(!e[0].starts_with("error:"), "{e:?}");
}

#[test]
fn unknown_env_var_is_invalid_with_a_suggestion() {
    let e = errs(&[], &[("POLLGATE_LISTN", ":1"), ("OTHER_THING", "x")]);
    assert_eq!(
        e,
        ["POLLGATE_LISTN: unknown environment variable, did you mean POLLGATE_LISTEN?"]
    );
    one_error(
        &[],
        &[("POLLGATE_max_age", "1s")],
        &["did you mean POLLGATE_MAX_AGE?"],
    );
    let e = errs(&[], &[("POLLGATE_ZZZZZZZZZZZZ", "1")]);
    assert!(
        e[0].contains("unknown") && !e[0].contains("did you mean"),
        "{e:?}"
    );
}

#[test]
fn unknown_file_key_is_invalid_with_a_suggestion() {
    let file = TempToml::new("max-age = \"1s\"\n");
    let want = "max-age: unknown key, did you mean max_age?";
    one_error(&["--config", file.path()], &[], &[want]);
}

#[test]
fn unreadable_or_invalid_file_names_the_file() {
    let missing = std::env::temp_dir().join("pollgate-surely-missing.toml");
    let parts = ["pollgate-surely-missing.toml", "cannot read"];
    one_error(&["--config", missing.to_str().unwrap()], &[], &parts);
    let file = TempToml::new("max_age = \n");
    one_error(&["--config", file.path()], &[], &[file.path(), "line 1"]);
}

#[test]
fn file_shapes() {
    let file = TempToml::new("max_age = [\"1s\"]\npassthrough = false\n");
    one_error(
        &["--config", file.path()],
        &[],
        &["max_age: takes a single value"],
    );
    let file = TempToml::new("passthrough = false\nupstream_queue = 7\nroute = \"/a/{key}\"");
    let c = ok(&["--config", file.path()], &[]);
    assert!(!c.passthrough);
    assert_eq!(c.upstream_queue, 7);
    assert_eq!(c.route, ["/a/{key}"]);
}

#[test]
fn help_and_version_are_display() {
    let Err(LoadError::Display(help)) = run(&["--help"], &[]) else {
        panic!("help")
    };
    for needle in [
        "--max-age",
        "--upstream",
        "--internal-listen",
        "--print-config",
        "--config",
    ] {
        assert!(help.contains(needle), "{needle} missing from help:\n{help}");
    }
    for needle in [
        "[default: 60s]",
        "POLLGATE_MAX_AGE",
        "DURATION",
        "Precedence",
        "KiB",
    ] {
        assert!(help.contains(needle), "{needle} missing from help:\n{help}");
    }
    let Err(LoadError::Display(v)) = run(&["--version"], &[]) else {
        panic!("version")
    };
    assert!(v.contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn every_key_has_a_flag_and_an_env_var() {
    let help = command().render_long_help().to_string();
    for (key, flag) in KEYS.iter().zip(flag_names()) {
        assert!(help.contains(&format!("--{flag} ")), "--{flag}");
        assert!(help.contains(&key.env_name()), "{}", key.env_name());
    }
}

fn unusual() -> Vec<&'static str> {
    let args = "--listen 0.0.0.0:9000 --internal-listen 127.0.0.1:9001 --header-read-timeout 3s
        --max-header-size 32KiB --grace-period 1m --upstream http://10.0.0.1:3000
        --upstream http://[::1]:3001 --version-header X-App-Version --passthrough no
        --upstream-max-inflight 9 --upstream-queue 0 --upstream-queue-timeout 250ms
        --upstream-connect-timeout 2s --upstream-timeout 1h --breaker-failures 3
        --breaker-open 90s --route /a/{key}?since={version} --route /b/{key}/{version}
        --max-age 0s --coalesce-wait 1s --poll-interval 7s --publish-max-body 1000
        --node-id me --data-dir /var/lib/pollgate --log-format json";
    args.split_whitespace().collect()
}

#[test]
fn print_config_round_trips() {
    let c = ok(&unusual(), &[]);
    assert_ne!(c, Config::default());
    let file = TempToml::new(&to_toml(&c));
    assert_eq!(ok(&["--config", file.path()], &[]), c, "{}", to_toml(&c));
    let c = ok(
        &["--peer", "p:1", "--peer", "q:2", "--cluster-key", "k3y"],
        &[],
    );
    let file = TempToml::new(&to_toml(&c).replace(REDACTED, "k3y"));
    assert_eq!(ok(&["--config", file.path()], &[]), c);
    let file = TempToml::new(&to_toml(&Config::default()));
    assert_eq!(ok(&["--config", file.path()], &[]), Config::default());
}

#[test]
fn print_config_redacts_secrets() {
    let args = [
        "--publish-token",
        "s3cret-p",
        "--admin-token",
        "s3cret-a",
        "--print-config",
    ];
    let cli = run(&args, &[("POLLGATE_CLUSTER_KEY", "s3cret-c")]).unwrap();
    assert!(cli.print_config);
    let out = to_toml(&cli.config);
    assert!(!out.contains("s3cret"), "{out}");
    assert!(out.contains("publish_token = [\"<set>\"]"), "{out}");
    assert!(out.contains("cluster_key = [\"<set>\"]"), "{out}");
    assert!(!to_toml(&Config::default()).contains("\npublish_token ="));
    let file = TempToml::new(&out);
    let e = errs(&["--config", file.path()], &[]);
    assert_eq!(e.len(), 3, "{e:?}");
    assert!(e.iter().all(|l| l.contains("placeholder")), "{e:?}");
}

#[test]
fn node_id_follows_the_internal_port() {
    let c = ok(&["--internal-listen", "127.0.0.1:9555"], &[]);
    assert_eq!(c.node_id, default_node_id(9555));
    let c = ok(
        &["--internal-listen", "127.0.0.1:9555", "--node-id", "n1"],
        &[],
    );
    assert_eq!(c.node_id, "n1");
}

#[test]
fn port_zero_is_named_by_the_port_bound() {
    let mut c = ok(&["--internal-listen", "127.0.0.1:0"], &[]);
    c.name_by_bound_port(40123);
    assert_eq!(c.node_id, default_node_id(40123));
    let mut c = ok(
        &["--internal-listen", "127.0.0.1:0", "--node-id", "n1"],
        &[],
    );
    c.name_by_bound_port(40123);
    assert_eq!(c.node_id, "n1", "an explicit name is kept");
    let mut c = ok(&["--internal-listen", "127.0.0.1:9555"], &[]);
    c.name_by_bound_port(40123);
    assert_eq!(
        c.node_id,
        default_node_id(9555),
        "a fixed port is its own name"
    );
}

#[test]
fn a_reload_keeps_the_name_given_by_the_bound_port() {
    let mut start = ok(&["--internal-listen", "127.0.0.1:0"], &[]);
    start.name_by_bound_port(40123);
    let mut reloaded = ok(&["--internal-listen", "127.0.0.1:0"], &[]);
    reloaded.keep_start_name(&start);
    assert_eq!(reloaded.node_id, start.node_id);
    let mut renamed = ok(
        &["--internal-listen", "127.0.0.1:0", "--node-id", "n2"],
        &[],
    );
    renamed.keep_start_name(&start);
    assert_eq!(renamed.node_id, "n2", "a new explicit name is a change");
}

#[test]
fn peer_needs_a_cluster_key() {
    let e = errs(&["--peer", "10.0.0.2:8081"], &[]);
    assert_eq!(e, [PEER_WITHOUT_KEY]);
    ok(&["--peer", "10.0.0.2:8081", "--cluster-key", "k"], &[]);
    let c = ok(
        &["--peer", "10.0.0.2:8081", "--insecure-cluster", "true"],
        &[],
    );
    assert!(c.insecure_cluster && c.cluster_key.is_empty());
    let c = ok(&["--insecure-cluster", "--peer", "10.0.0.2:8081"], &[]);
    assert!(c.insecure_cluster, "a bare boolean flag means true");
    assert!(!ok(&["--insecure-cluster", "false"], &[]).insecure_cluster);
}

#[test]
fn cross_field_checks() {
    let e = errs(&["--listen", "127.0.0.1:8081"], &[]);
    assert!(e[0].contains("overlap"), "{e:?}");
    let e = errs(
        &["--listen", ":9000", "--internal-listen", "127.0.0.1:9000"],
        &[],
    );
    assert!(e[0].contains("overlap"), "{e:?}");
    ok(
        &[
            "--listen",
            "127.0.0.1:0",
            "--internal-listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    let e = errs(
        &["--upstream-timeout", "0s"],
        &[("POLLGATE_UPSTREAM", " , ")],
    );
    assert_eq!(e.len(), 2, "{e:?}");
}

#[test]
fn range_checks() {
    let args = [
        "--upstream-max-inflight",
        "0",
        "--breaker-failures",
        "0",
        "--max-header-size",
        "512",
        "--publish-max-body",
        "0",
        "--upstream-queue=-1",
        "--upstream-connect-timeout",
        "0s",
    ];
    assert_eq!(errs(&args, &[]).len(), 6);
    let c = ok(&["--upstream-queue", "0", "--max-header-size", "1MiB"], &[]);
    assert_eq!((c.upstream_queue, c.max_header_size), (0, 1 << 20));
}

#[test]
fn default_config_validates_without_routes() {
    assert!(Config::default().validate_fields().is_empty());
    assert!(Path::new(&std::env::temp_dir()).is_dir());
}

/// Each field's doc comment in `mod.rs`, by field name.
fn field_docs(src: &str) -> std::collections::HashMap<String, String> {
    let start = src.find("pub struct Config {").expect("struct Config");
    let mut docs = std::collections::HashMap::new();
    let mut doc = String::new();
    for line in src[start..].lines().skip(1).map(str::trim) {
        if line == "}" {
            break;
        }
        if let Some(text) = line.strip_prefix("///") {
            doc.push_str(text);
            doc.push('\n');
        } else if let Some((name, _)) = line.strip_prefix("pub ").and_then(|l| l.split_once(':')) {
            docs.insert(name.to_string(), std::mem::take(&mut doc));
        }
    }
    docs
}

/// A default is written once, in `Default`; `--help` and `--print-config`
/// derive their text from it. This pins that the help shows it, that the
/// text parses back to the same value and that the field's doc states it.
#[test]
fn defaults_agree_in_default_key_table_help_and_docs() {
    let defaults = Config::default();
    let other = ok(&unusual(), &[]);
    let help = command().render_help().to_string();
    let docs = field_docs(include_str!("mod.rs"));
    assert_eq!(docs.len(), KEYS.len(), "one key per field: {docs:?}");
    for (key, text) in KEYS.iter().zip(default_texts()) {
        let name = key.name;
        assert!(
            help.contains(&format!("[default: {text}]")),
            "--help, {name}"
        );
        let doc = &docs[name];
        let value = (key.get)(&defaults);
        if key.note.is_some() {
            let unset = value.as_ref().is_none_or(|v| v == &Value::Array(vec![]));
            assert!(unset || name == "node_id", "{name}: a note hides {value:?}");
            assert!(!doc.is_empty(), "{name} has no doc");
            continue;
        }
        assert!(
            doc.contains(&format!("`{text}`")),
            "doc of {name} lacks `{text}`: {doc}"
        );
        let mut c = other.clone();
        assert_eq!(
            (key.set)(&mut c, std::slice::from_ref(text)),
            Ok(()),
            "{name}"
        );
        assert_eq!(
            (key.get)(&c),
            value,
            "{name}: {text:?} parses to another value"
        );
    }
}

#[test]
fn help_shows_the_defaults_as_the_readme_writes_them() {
    let help = command().render_help().to_string();
    for shown in [
        "[default: 60s]",
        "[default: X-Pollgate-Version]",
        "[default: 16KiB]",
        "[default: 1MiB]",
        "[default: http://127.0.0.1:3000]",
        "[default: /projects/{key}/changes?since={version}]",
        "[default: 100000]",
        "[default: unset: publishing refused]",
        "[default: hostname:<internal_listen port>]",
    ] {
        assert!(help.contains(shown), "{shown} missing from help:\n{help}");
    }
}

#[test]
fn print_config_writes_durations_and_header_names_as_the_readme() {
    let out = to_toml(&Config::default());
    for line in [
        "max_age = \"60s\"",
        "wait_max_timeout = \"60s\"",
        "version_header = \"X-Pollgate-Version\"",
        "max_header_size = \"16KiB\"",
        "# A client must send its request head within this (slowloris guard) [default: 10s]",
    ] {
        assert!(out.contains(line), "{line} missing from:\n{out}");
    }
    let c = ok(&["--grace-period", "1m", "--coalesce-wait", "1500ms"], &[]);
    let out = to_toml(&c);
    assert!(out.contains("grace_period = \"60s\""), "{out}");
    assert!(out.contains("coalesce_wait = \"1500ms\""), "{out}");
}

#[test]
fn unknown_flags_are_reported_with_every_other_error() {
    let args = [
        "--bogus",
        "--listen",
        "nothost",
        "--max-agee",
        "1s",
        "stray",
        "--x=1",
    ];
    let e = errs(&args, &[("POLLGATE_LISTN", ":1")]);
    assert_eq!(e.len(), 6, "{e:#?}");
    let has = |part: &str| e.iter().any(|l| l.contains(part));
    for part in [
        "unexpected argument '--bogus' found",
        "'--max-agee' found; tip: a similar argument exists: '--max-age'",
        "unexpected argument 'stray' found",
        "unexpected argument '--x' found",
        "listen: \"nothost\" (from --listen)",
        "POLLGATE_LISTN: unknown environment variable",
    ] {
        assert!(has(part), "{part} not in {e:#?}");
    }
    assert!(
        !has("'1s'"),
        "the unknown flag's value is not a second error: {e:#?}"
    );
}

#[test]
fn a_flag_missing_its_value_still_reports_the_rest() {
    let e = errs(&["--bogus", "--listen"], &[("POLLGATE_MAX_AGE", "soon")]);
    assert_eq!(e.len(), 3, "{e:#?}");
    assert!(
        e[0].contains("'--bogus'") && e[1].contains("--listen"),
        "{e:#?}"
    );
    assert!(e[2].contains("max_age: \"soon\""), "{e:#?}");
    let Err(LoadError::Display(help)) = run(&["--bogus", "--help"], &[]) else {
        panic!("--help still shows the help")
    };
    assert!(help.contains("--max-age"));
}

#[test]
fn log_level_takes_a_filter_and_names_a_bad_one() {
    let c = ok(&["--log-level", "warn,pollgate::upstream=debug"], &[]);
    assert_eq!(c.log_level, "warn,pollgate::upstream=debug");
    assert_eq!(ok(&[], &[]).log_level, "info");
    let e = errs(&["--log-level", "pollgate=loud"], &[]);
    assert!(e.len() == 1 && e[0].starts_with("log_level:"), "{e:?}");
    assert!(errs(&["--log-level", " "], &[])[0].contains("empty"));
}

#[test]
fn flags_and_env_pin_keys_the_file_cannot_change() {
    let cli = run(
        &["--upstream", "http://a:1"],
        &[("POLLGATE_ADMIN_TOKEN", "x")],
    )
    .unwrap();
    assert_eq!(cli.pinned, ["upstream", "admin_token"]);
    assert!(run(&[], &[]).unwrap().pinned.is_empty());
}

/// A secret file with `mode` in a fresh temp dir (kept alive by the handle).
fn secret_file(text: &str, mode: u32) -> (tempfile::TempDir, String) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    let path = path.to_str().unwrap().to_string();
    (dir, path)
}

#[test]
fn a_secret_file_gives_one_value_per_line() {
    let (_d, tokens) = secret_file("new-token\r\n\nold-token\n", 0o600);
    let (_e, key) = secret_file("k3y\n", 0o400);
    let env = [("POLLGATE_CLUSTER_KEY_FILE", key.as_str())];
    let cli = run(&["--publish-token-file", &tokens], &env).unwrap();
    assert_eq!(cli.config.publish_token, ["new-token", "old-token"]);
    assert_eq!(cli.config.cluster_key, ["k3y"]);
    assert!(cli.warnings.is_empty(), "{:?}", cli.warnings);
    // The file key from the config file too.
    let (_f, secret) = secret_file(&format!("{}\n", "s".repeat(32)), 0o640);
    let toml = TempToml::new(&format!("auth_jwt_secret_file = {secret:?}\n"));
    let c = ok(&["--config", toml.path()], &[]);
    assert_eq!(c.auth_jwt_secret, ["s".repeat(32)]);
}

#[test]
fn print_config_shows_the_file_not_the_secret_and_loads_again() {
    let (_d, tokens) = secret_file("s3cret-p\n", 0o600);
    let cli = run(&["--publish-token-file", &tokens], &[]).unwrap();
    let out = to_toml(&cli.config);
    assert!(!out.contains("s3cret"), "{out}");
    assert!(
        out.contains(&format!("publish_token_file = {tokens:?}")),
        "{out}"
    );
    assert!(out.contains("# publish_token is unset"), "{out}");
    let file = TempToml::new(&out);
    assert_eq!(ok(&["--config", file.path()], &[]), cli.config);
}

#[test]
fn a_broken_secret_file_is_an_error_naming_key_and_path() {
    let (_d, empty) = secret_file("\n\r\n", 0o600);
    one_error(
        &["--admin-token-file", &empty],
        &[],
        &["admin_token_file", &empty, "empty"],
    );
    let missing = format!("{empty}-gone");
    one_error(
        &["--cluster-key-file", &missing],
        &[],
        &["cluster_key_file", &missing, "cannot read"],
    );
    let (_e, spaced) = secret_file("good\nbad token\n", 0o600);
    let e = errs(&["--publish-token-file", &spaced], &[]);
    assert!(e.len() == 1 && e[0].contains("line 2 of"), "{e:?}");
    assert!(
        !e[0].contains("bad token"),
        "a secret is never echoed: {e:?}"
    );
    let (_f, short) = secret_file("too-short\n", 0o600);
    one_error(
        &["--auth-jwt-secret-file", &short],
        &[],
        &["auth_jwt_secret_file", "32 bytes"],
    );
    let dir = empty.rsplit_once('/').unwrap().0.to_string();
    one_error(
        &["--admin-token-file", &dir],
        &[],
        &["admin_token_file", "not a regular file"],
    );
    let (_h, big) = secret_file(&"t\n".repeat(40 << 10), 0o600);
    one_error(
        &["--publish-token-file", &big],
        &[],
        &["publish_token_file", "larger than 64KiB"],
    );
    let (_g, two) = secret_file("redis://:a@h:1/0\nredis://:b@h:1/0\n", 0o600);
    one_error(
        &["--redis-url-file", &two, "--redis-channel", "c"],
        &[],
        &["redis_url_file", "2 lines"],
    );
}

#[test]
fn a_world_writable_secret_file_is_refused_a_readable_one_warned_about() {
    let (_d, writable) = secret_file("t\n", 0o662);
    one_error(
        &["--publish-token-file", &writable],
        &[],
        &["publish_token_file", &writable, "writable by every user"],
    );
    let (_e, readable) = secret_file("t\n", 0o644);
    let cli = run(&["--publish-token-file", &readable], &[]).unwrap();
    assert_eq!(cli.config.publish_token, ["t"]);
    assert!(
        cli.warnings.len() == 1
            && cli.warnings[0].contains("publish_token_file")
            && cli.warnings[0].contains("readable by every user"),
        "{:?}",
        cli.warnings
    );
}

#[test]
fn a_secret_and_its_file_both_given_is_an_error() {
    let (_d, tokens) = secret_file("t\n", 0o600);
    let env = [("POLLGATE_PUBLISH_TOKEN", "t")];
    one_error(
        &["--publish-token-file", &tokens],
        &env,
        &[
            "publish_token (from POLLGATE_PUBLISH_TOKEN)",
            "publish_token_file (from --publish-token-file)",
            "both given",
        ],
    );
    let (_e, url) = secret_file("redis://h:1/0\n", 0o600);
    let toml = TempToml::new("redis_url = \"redis://h:1/0\"\nredis_channel = [\"c\"]\n");
    let e = errs(&["--config", toml.path(), "--redis-url-file", &url], &[]);
    assert!(e.len() == 1 && e[0].contains("both given"), "{e:?}");
}
