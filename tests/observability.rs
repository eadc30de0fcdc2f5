//! What an operator watches: the alert rules (promtool), the Grafana
//! dashboard, and the metrics they read — checked against a real pollgate.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{get, Pollgate, Upstream};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

fn promtool(args: &[&str], dir: &Path) {
    let Some(tool) = common::tool::require("promtool", "prometheus") else {
        return;
    };
    let out = Command::new(tool)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    let dir = repo("deploy/prometheus");
    promtool(&["check", "rules", "alerts.yml"], &dir);
    promtool(&["test", "rules", "alerts.test.yml"], &dir);
}

/// Every `expr` of the dashboard, with Grafana's variables filled in.
fn dashboard_exprs() -> Vec<String> {
    let dash: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/pollgate.json")).unwrap();
    let panels = dash["panels"].as_array().unwrap();
    let exprs: Vec<String> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .map(|t| {
            t["expr"]
                .as_str()
                .expect("a target without expr")
                .to_string()
        })
        .map(|e| {
            e.replace("$__rate_interval", "1m")
                .replace("$instance", ".*")
        })
        .collect();
    assert!(exprs.len() >= 20, "only {} queries", exprs.len());
    exprs
}

/// promtool has no "parse this query" command, so the dashboard's queries
/// become recording rules and `promtool check rules` parses them.
#[test]
fn dashboard_queries_are_valid_promql() {
    let dir = tempfile::tempdir().unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in dashboard_exprs().iter().enumerate() {
        let e = serde_json::to_string(e).unwrap(); // a JSON string is a YAML string
        rules.push_str(&format!(
            "      - record: dashboard_query_{i}\n        expr: {e}\n"
        ));
    }
    std::fs::write(dir.path().join("dashboard.yml"), rules).unwrap();
    promtool(&["check", "rules", "dashboard.yml"], dir.path());
}

/// `pollgate_*` names a text refers to, histogram suffixes removed.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("pollgate_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let preceded_by_word =
            rest[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':');
        if !preceded_by_word && end > "pollgate_".len() {
            let name = &tail[..end];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            names.insert(base.to_string());
        }
        rest = &tail[end..];
    }
    names
}

/// Metric families a real pollgate exposes with snapshots and a peer on.
async fn exposed_families() -> BTreeSet<String> {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    let pg = Pollgate::start(
        &up.url(),
        &[
            "--data-dir",
            &data,
            "--peer",
            "127.0.0.1:9",
            "--cluster-key",
            "k",
        ],
    );
    let (_, _, body) = get(&pg.internal_url("/metrics")).await;
    body.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect()
}

#[tokio::test]
async fn alerts_and_dashboard_use_only_metrics_pollgate_exposes() {
    let exposed = exposed_families().await;
    for file in [
        "deploy/prometheus/alerts.yml",
        "deploy/grafana/pollgate.json",
    ] {
        let used = metric_names(&read(file));
        assert!(used.len() >= 8, "{file}: found only {used:?}");
        let missing: Vec<_> = used.difference(&exposed).collect();
        assert!(
            missing.is_empty(),
            "{file} uses {missing:?}, not in /metrics"
        );
    }
}

/// A sample's value in a `/metrics` body.
fn sample(body: &str, name: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn build_info_names_the_commit() {
    let up = Upstream::start().await;
    let pg = Pollgate::start(&up.url(), &[]);
    let (_, _, body) = get(&pg.internal_url("/metrics")).await;
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or("unknown".into(), |o| {
            String::from_utf8_lossy(&o.stdout).trim().to_string()
        });
    let line = format!(
        "pollgate_build_info{{version=\"{}\",commit=\"{commit}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    assert!(body.lines().any(|l| l == line), "no {line:?} in /metrics");
}

#[tokio::test]
async fn process_metrics_follow_the_process() {
    let up = Upstream::start().await;
    let pg = Pollgate::start(&up.url(), &[]);
    let (_, _, before) = get(&pg.internal_url("/metrics")).await;
    let fds = sample(&before, "pollgate_process_open_fds");
    assert!(sample(&before, "pollgate_process_max_fds") > fds);
    assert!(sample(&before, "pollgate_process_resident_memory_bytes") > 1e6);
    let start = sample(&before, "pollgate_process_start_time_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (now - 60.0..=now + 1.0).contains(&start),
        "started at {start}, now {now}"
    );
    assert!(sample(&before, "pollgate_process_cpu_seconds_total") >= 0.0);

    // 40 idle connections to the public listener are 40 more descriptors.
    let conns: Vec<_> = (0..40)
        .map(|_| std::net::TcpStream::connect(pg.public).unwrap())
        .collect();
    let url = pg.internal_url("/metrics");
    let grew = common::eventually(Duration::from_secs(5), || async {
        sample(&get(&url).await.2, "pollgate_process_open_fds") >= fds + 40.0
    })
    .await;
    assert!(grew, "open fds did not follow 40 new connections");
    drop(conns);
}
