//! The files in `deploy/` as an operator uses them, each checked against the
//! real binary: the example config, the systemd unit, the Kubernetes manifests.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{get, Pollgate};
use serde_yaml::Value;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `pollgate ARGS --print-config` with exactly `env` as its `POLLGATE_*`
/// variables (the developer's own are removed); panics unless it exits 0.
fn print_config(args: &[String], env: &[(String, String)]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pollgate"));
    for (name, _) in std::env::vars().filter(|(k, _)| k.starts_with("POLLGATE_")) {
        cmd.env_remove(name);
    }
    let out = cmd
        .args(args)
        .arg("--print-config")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("run pollgate");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "pollgate {args:?} with env {env:?} refused: {stderr}"
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `key = value` lines of `--print-config` output (unset keys are comments).
fn effective(toml: &str) -> BTreeMap<String, String> {
    toml.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(" = "))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect()
}

/// Every key `--print-config` knows, set or unset.
fn key_names(toml: &str) -> Vec<String> {
    let unset = toml
        .lines()
        .filter_map(|l| l.strip_prefix("# ")?.strip_suffix(" is unset"));
    let set = toml
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| Some(l.split_once(" = ")?.0));
    unset.chain(set).map(String::from).collect()
}

fn seconds(humantime_text: &str) -> u64 {
    humantime::parse_duration(humantime_text)
        .unwrap_or_else(|e| panic!("{humantime_text:?}: {e}"))
        .as_secs()
}

// ---------------------------------------------------------------------------
// deploy/pollgate.toml

#[test]
fn example_config_sets_every_key_to_its_default() {
    let path = repo("deploy/pollgate.toml");
    let defaults = print_config(&[], &[]);
    let example = print_config(&["--config".into(), path.display().to_string()], &[]);
    assert_eq!(
        example, defaults,
        "deploy/pollgate.toml must load as the built-in defaults"
    );
    let file = read(&path);
    for key in key_names(&defaults) {
        let documented = file
            .lines()
            .any(|l| l.starts_with(&format!("{key} = ")) || l.starts_with(&format!("# {key} = ")));
        assert!(documented, "deploy/pollgate.toml does not mention {key}");
    }
}

// ---------------------------------------------------------------------------
// deploy/pollgate.service

/// `Key=Value` lines of one section of a unit file, in order.
fn unit_section(text: &str, section: &str) -> Vec<(String, String)> {
    let header = format!("[{section}]");
    text.lines()
        .skip_while(|l| l.trim() != header)
        .skip(1)
        .take_while(|l| !l.starts_with('['))
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn unit_value<'a>(service: &'a [(String, String)], key: &str) -> &'a str {
    let found = service.iter().find(|(k, _)| k == key);
    &found.unwrap_or_else(|| panic!("unit lacks {key}=")).1
}

const INSTALLED_BIN: &str = "/usr/local/bin/pollgate";
const INSTALLED_CONFIG: &str = "/etc/pollgate/pollgate.toml";

#[test]
fn systemd_unit_verifies_and_is_sandboxed() {
    let Some(analyze) = common::tool::require("systemd-analyze", "systemd") else {
        return;
    };
    let text = read(&repo("deploy/pollgate.service"));
    assert!(text.contains(&format!("ExecStart={INSTALLED_BIN} ")));
    let dir = tempfile::tempdir().unwrap();
    let unit = verify_unit(&analyze, dir.path(), &text, "");

    // Exposure above 2.0 ("OK" ends there) fails: the sandbox must stay tight.
    let out = Command::new(&analyze)
        .args(["security", "--offline=yes", "--threshold=20"])
        .arg(&unit)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "systemd-analyze security: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn systemd_unit_arguments_and_limits_fit_pollgate() {
    let service = unit_section(&read(&repo("deploy/pollgate.service")), "Service");
    let exec = unit_value(&service, "ExecStart");
    let example = repo("deploy/pollgate.toml").display().to_string();
    let args: Vec<String> = exec
        .split_whitespace()
        .skip(1)
        .map(|a| a.replace(INSTALLED_CONFIG, &example))
        .collect();
    let env: Vec<(String, String)> = service
        .iter()
        .filter(|(k, _)| k == "Environment")
        .filter_map(|(_, v)| v.split_once('='))
        .filter(|(k, _)| k.starts_with("POLLGATE_"))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let cfg = effective(&print_config(&args, &env));
    assert_eq!(cfg["data_dir"], "/var/lib/pollgate");
    assert_eq!(unit_value(&service, "StateDirectory"), "pollgate");

    let grace = seconds(&cfg["grace_period"]);
    let stop = seconds(unit_value(&service, "TimeoutStopSec"));
    assert!(
        stop > grace,
        "TimeoutStopSec {stop}s must exceed grace_period {grace}s"
    );
    let nofile: u64 = unit_value(&service, "LimitNOFILE").parse().unwrap();
    let push: u64 = cfg["push_max_connections"].parse().unwrap();
    assert!(
        nofile > push,
        "LimitNOFILE {nofile} <= push_max_connections {push}"
    );
    for (k, v) in [
        ("DynamicUser", "yes"),
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
    ] {
        assert_eq!(unit_value(&service, k), v);
    }
}

/// The unit with its commented systemd-credentials example put in force:
/// the `#LoadCredential=` lines, and `#ExecStart=` in place of ExecStart.
fn unit_with_credentials(text: &str) -> String {
    fn example(l: &str) -> Option<&str> {
        let l = l.strip_prefix('#')?;
        (l.starts_with("LoadCredential=") || l.starts_with("ExecStart=")).then_some(l)
    }
    let mut out = String::new();
    for line in text.lines() {
        if line.starts_with("ExecStart=") {
            continue;
        }
        out.push_str(example(line).unwrap_or(line));
        out.push('\n');
    }
    out
}

#[test]
fn systemd_credentials_example_verifies_and_loads() {
    let text = unit_with_credentials(&read(&repo("deploy/pollgate.service")));
    let service = unit_section(&text, "Service");
    let creds: Vec<&str> = service
        .iter()
        .filter(|(k, _)| k == "LoadCredential")
        .map(|(_, v)| v.split_once(':').expect("LoadCredential=ID:PATH").0)
        .collect();
    assert!(creds.len() >= 3, "the example loads {creds:?}");
    // systemd puts each credential in $CREDENTIALS_DIRECTORY (%d), mode 0400.
    let dir = tempfile::tempdir().unwrap();
    for id in &creds {
        let path = dir.path().join(id);
        std::fs::write(&path, "a-credential-long-enough-for-any-key-0123\n").unwrap();
        let ro = std::os::unix::fs::PermissionsExt::from_mode(0o400);
        std::fs::set_permissions(&path, ro).unwrap();
    }
    let example = repo("deploy/pollgate.toml").display().to_string();
    let args: Vec<String> = unit_value(&service, "ExecStart")
        .split_whitespace()
        .skip(1)
        .map(|a| a.replace(INSTALLED_CONFIG, &example))
        .map(|a| a.replace("%d", dir.path().to_str().unwrap()))
        .collect();
    let cfg = effective(&print_config(&args, &[]));
    let files: Vec<&str> = cfg
        .iter()
        .filter(|(k, _)| k.ends_with("_file"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(
        files.len(),
        creds.len(),
        "one *_file per credential: {cfg:?}"
    );
    for id in &creds {
        let path = dir.path().join(id).display().to_string();
        assert!(files.contains(&path.as_str()), "{id} not read: {files:?}");
    }
    let Some(analyze) = common::tool::require("systemd-analyze", "systemd") else {
        return;
    };
    verify_unit(&analyze, dir.path(), &text, " with credentials");
}

/// Writes the unit `text` into `dir` with ExecStart on the built binary
/// (verify checks it is executable) and runs `systemd-analyze verify` on
/// it; any output fails (unknown keys and bad values are only warnings on
/// stderr, exit 0). The unit's path.
fn verify_unit(analyze: &Path, dir: &Path, text: &str, what: &str) -> PathBuf {
    let unit = dir.join("pollgate.service");
    let bin = env!("CARGO_BIN_EXE_pollgate");
    std::fs::write(&unit, text.replace(INSTALLED_BIN, bin)).unwrap();
    let out = Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify{what}: {stderr}"
    );
    unit
}

// ---------------------------------------------------------------------------
// deploy/kubernetes/

/// Every document of every manifest, with the file it came from.
fn manifests() -> Vec<(String, Value)> {
    let dir = repo("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in {}", dir.display());
    let mut docs = Vec::new();
    for file in files {
        let text = read(&file);
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value: Value =
                serde::Deserialize::deserialize(doc).unwrap_or_else(|e| panic!("{name}: {e}"));
            if !value.is_null() {
                docs.push((name.clone(), value));
            }
        }
    }
    docs
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

fn kind(doc: &Value) -> &str {
    s(&doc["kind"])
}

fn name(doc: &Value) -> &str {
    s(&doc["metadata"]["name"])
}

fn labels(v: &Value) -> BTreeMap<String, String> {
    v.as_mapping()
        .into_iter()
        .flatten()
        .map(|(k, v)| (s(k).to_string(), s(v).to_string()))
        .collect()
}

fn selects(selector: &BTreeMap<String, String>, pod: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| pod.get(k) == Some(v))
}

fn workloads(docs: &[(String, Value)]) -> Vec<&(String, Value)> {
    docs.iter()
        .filter(|(_, d)| matches!(kind(d), "Deployment" | "StatefulSet" | "DaemonSet"))
        .collect()
}

fn pod_labels(workload: &Value) -> BTreeMap<String, String> {
    labels(&workload["spec"]["template"]["metadata"]["labels"])
}

fn containers(workload: &Value) -> &[Value] {
    workload["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .map_or(&[], Vec::as_slice)
}

fn is_pollgate(container: &Value) -> bool {
    s(&container["image"]).contains("pollgate")
}

/// The container port a Service or probe names (a number or a port name).
fn container_port(containers: &[Value], port: &Value) -> Option<u64> {
    if let Some(n) = port.as_u64() {
        return Some(n);
    }
    containers
        .iter()
        .flat_map(|c| c["ports"].as_sequence().into_iter().flatten())
        .find(|p| s(&p["name"]) == s(port))
        .and_then(|p| p["containerPort"].as_u64())
}

#[test]
fn every_manifest_is_wellformed_and_references_resolve() {
    let docs = manifests();
    let secrets: BTreeMap<&str, BTreeSet<String>> = docs
        .iter()
        .filter(|(_, d)| kind(d) == "Secret")
        .map(|(_, d)| (name(d), secret_keys(d)))
        .collect();
    for (file, doc) in &docs {
        assert!(
            !s(&doc["apiVersion"]).is_empty() && !kind(doc).is_empty() && !name(doc).is_empty(),
            "{file}: a document without apiVersion, kind or metadata.name"
        );
    }
    for (file, w) in workloads(&docs) {
        let pod = pod_labels(w);
        assert!(
            selects(&labels(&w["spec"]["selector"]["matchLabels"]), &pod),
            "{file}: {} selector does not match its pod labels",
            name(w)
        );
        for c in containers(w) {
            check_secret_refs(file, c, &secrets);
        }
    }
    for (file, doc) in &docs {
        match kind(doc) {
            "Service" => check_service(file, doc, &docs),
            "PodDisruptionBudget" => {
                let sel = labels(&doc["spec"]["selector"]["matchLabels"]);
                let covered = workloads(&docs)
                    .iter()
                    .any(|(_, w)| selects(&sel, &pod_labels(w)));
                assert!(covered, "{file}: PDB {} selects no workload", name(doc));
            }
            _ => {}
        }
    }
}

fn secret_keys(secret: &Value) -> BTreeSet<String> {
    let data = labels(&secret["data"]);
    let string_data = labels(&secret["stringData"]);
    data.into_keys().chain(string_data.into_keys()).collect()
}

fn check_secret_refs(file: &str, container: &Value, secrets: &BTreeMap<&str, BTreeSet<String>>) {
    for e in container["env"].as_sequence().into_iter().flatten() {
        let r = &e["valueFrom"]["secretKeyRef"];
        if r.is_null() {
            continue;
        }
        let keys = secrets.get(s(&r["name"]));
        assert!(
            keys.is_some_and(|k| k.contains(s(&r["key"]))),
            "{file}: env {} refers to secret {}/{} not defined in the file",
            s(&e["name"]),
            s(&r["name"]),
            s(&r["key"])
        );
    }
}

/// A Service selects a workload, and each of its target ports is a port of it.
fn check_service(file: &str, svc: &Value, docs: &[(String, Value)]) {
    let sel = labels(&svc["spec"]["selector"]);
    let target = workloads(docs)
        .into_iter()
        .find(|(_, w)| selects(&sel, &pod_labels(w)))
        .unwrap_or_else(|| panic!("{file}: Service {} selects no workload", name(svc)));
    for p in svc["spec"]["ports"].as_sequence().into_iter().flatten() {
        let t = if p["targetPort"].is_null() {
            &p["port"]
        } else {
            &p["targetPort"]
        };
        assert!(
            container_port(containers(&target.1), t).is_some(),
            "{file}: Service {} targets port {t:?}, which its pods do not have",
            name(svc)
        );
    }
}

/// A pollgate container: its `args` and its `POLLGATE_*` env, secrets
/// replaced by a placeholder (their reference was checked above).
fn pollgate_command(c: &Value) -> (Vec<String>, Vec<(String, String)>) {
    let args: Vec<String> = c["args"]
        .as_sequence()
        .into_iter()
        .flatten()
        .map(|a| s(a).to_string())
        .collect();
    let env = c["env"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter(|e| s(&e["name"]).starts_with("POLLGATE_"))
        .map(|e| {
            let value = e["value"].as_str().unwrap_or("secret-from-the-manifest");
            (s(&e["name"]).to_string(), value.to_string())
        })
        .collect();
    (args, env)
}

/// What a mounted Secret's file holds here: long enough for any secret key.
const MOUNTED_SECRET: &str = "secret-from-the-manifest-volume-0123456789";

/// The Secret volumes `c` mounts, written under `dir` as the kubelet would
/// (one file per projected key, with the volume's mode); each mount path
/// with where it is here. A volume naming a Secret or key the manifests do
/// not define fails.
fn mount_secrets(
    file: &str,
    w: &Value,
    c: &Value,
    docs: &[(String, Value)],
    dir: &Path,
) -> Vec<(String, PathBuf)> {
    use std::os::unix::fs::PermissionsExt;
    let volumes = w["spec"]["template"]["spec"]["volumes"].as_sequence();
    let mut out = Vec::new();
    for m in c["volumeMounts"].as_sequence().into_iter().flatten() {
        let Some(v) = volumes
            .into_iter()
            .flatten()
            .find(|v| s(&v["name"]) == s(&m["name"]))
        else {
            continue;
        };
        let secret = &v["secret"];
        if secret.is_null() {
            continue;
        }
        let wanted = s(&secret["secretName"]);
        let (_, doc) = docs
            .iter()
            .find(|(_, d)| kind(d) == "Secret" && name(d) == wanted)
            .unwrap_or_else(|| panic!("{file}: volume {} names no Secret {wanted}", s(&v["name"])));
        let keys = secret_keys(doc);
        let local = dir.join(format!("secret-{}", s(&v["name"])));
        std::fs::create_dir_all(&local).unwrap();
        let mode = secret["defaultMode"].as_u64().unwrap_or(0o644) as u32;
        assert!(
            mode <= 0o777,
            "{file}: defaultMode {mode} is not a file mode"
        );
        let items: Vec<(&str, &str)> = match secret["items"].as_sequence() {
            Some(items) => items
                .iter()
                .map(|i| (s(&i["key"]), s(&i["path"])))
                .collect(),
            None => keys.iter().map(|k| (k.as_str(), k.as_str())).collect(),
        };
        for (key, path) in items {
            assert!(
                keys.contains(key),
                "{file}: Secret {wanted} has no key {key}"
            );
            let path = local.join(path);
            std::fs::write(&path, format!("{MOUNTED_SECRET}\n")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        out.push((s(&m["mountPath"]).to_string(), local));
    }
    out
}

/// `args` with each mount path replaced by where its files are here.
fn with_mounts(args: &[String], mounts: &[(String, PathBuf)]) -> Vec<String> {
    let moved = |a: &String| {
        mounts.iter().fold(a.clone(), |a, (mount, local)| {
            a.replace(mount.as_str(), local.to_str().unwrap())
        })
    };
    args.iter().map(moved).collect()
}

/// The flag value of `--name=value` or `--name value` in `args`.
fn flag<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    for (i, a) in args.iter().enumerate() {
        if let Some(v) = a.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
            out.push(v);
        } else if a == flag {
            out.extend(args.get(i + 1).map(String::as_str));
        }
    }
    out
}

#[test]
fn pollgate_containers_accept_their_arguments_and_fit_the_shutdown_budget() {
    let docs = manifests();
    let mut seen = 0;
    for (file, w) in workloads(&docs) {
        let spec = &w["spec"]["template"]["spec"];
        for c in containers(w).iter().filter(|c| is_pollgate(c)) {
            seen += 1;
            let (args, env) = pollgate_command(c);
            let secrets = tempfile::tempdir().unwrap();
            let mounts = mount_secrets(file, w, c, &docs, secrets.path());
            let cfg = effective(&print_config(&with_mounts(&args, &mounts), &env));
            let internal: std::net::SocketAddr = cfg["internal_listen"].parse().unwrap();
            for probe in probes(c) {
                let port = container_port(containers(w), &probe["httpGet"]["port"]);
                assert_eq!(
                    port,
                    Some(u64::from(internal.port())),
                    "{file}: a probe of {} is not on the internal listener",
                    name(w)
                );
            }
            let pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
                .as_u64()
                .unwrap_or(0);
            let grace = seconds(&cfg["grace_period"]);
            let budget = spec["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
            assert!(
                budget > pre_stop + grace,
                "{file}: terminationGracePeriodSeconds {budget} must exceed preStop {pre_stop}s + grace_period {grace}s"
            );
            check_peers(file, w, &args, &docs, internal.port());
        }
    }
    assert!(
        seen >= 2,
        "expected a sidecar and a replica group, saw {seen} pollgate containers"
    );
}

fn probes(c: &Value) -> Vec<&Value> {
    let probes: Vec<&Value> = ["startupProbe", "livenessProbe", "readinessProbe"]
        .iter()
        .map(|p| &c[*p])
        .filter(|p| !p.is_null())
        .collect();
    assert!(
        probes.iter().any(|p| s(&p["httpGet"]["path"]) == "/readyz"),
        "a pollgate container without a /readyz readiness probe"
    );
    probes
}

/// Each `--peer host:port` names a headless Service of this workload that
/// publishes not-ready addresses (replicas must find each other before they
/// are ready) and reaches the internal listener.
fn check_peers(file: &str, w: &Value, args: &[String], docs: &[(String, Value)], internal: u16) {
    for peer in flag(args, "--peer") {
        let (host, port) = peer.rsplit_once(':').expect("peer is host:port");
        let svc_name = host.split('.').next().unwrap();
        let (_, svc) = docs
            .iter()
            .find(|(_, d)| kind(d) == "Service" && name(d) == svc_name)
            .unwrap_or_else(|| panic!("{file}: --peer {peer}: no Service {svc_name}"));
        assert_eq!(
            s(&svc["spec"]["clusterIP"]),
            "None",
            "{file}: {svc_name} must be headless"
        );
        assert_eq!(
            svc["spec"]["publishNotReadyAddresses"].as_bool(),
            Some(true)
        );
        assert!(selects(&labels(&svc["spec"]["selector"]), &pod_labels(w)));
        let ports = svc["spec"]["ports"].as_sequence().unwrap();
        let p = ports
            .iter()
            .find(|p| p["port"].as_u64().map(|n| n.to_string()).as_deref() == Some(port))
            .unwrap_or_else(|| panic!("{file}: {svc_name} has no port {port}"));
        // A headless Service does not remap ports: the address is the pod's.
        assert_eq!(
            port,
            internal.to_string(),
            "{file}: --peer port is not internal_listen's"
        );
        assert_eq!(
            container_port(containers(w), &p["targetPort"]),
            Some(u64::from(internal))
        );
    }
}

/// Runs each pollgate container's command for real (listeners moved to
/// loopback port 0, peers and data dir local) and asks every probe path.
#[tokio::test]
async fn every_probe_path_answers_on_the_internal_listener() {
    let docs = manifests();
    for (file, w) in workloads(&docs) {
        for c in containers(w).iter().filter(|c| is_pollgate(c)) {
            let data = tempfile::tempdir().unwrap();
            let mounts = mount_secrets(file, w, c, &docs, data.path());
            let args = with_mounts(&local_args(c, data.path()), &mounts);
            let pg = Pollgate::start_args(&args.iter().map(String::as_str).collect::<Vec<_>>());
            for probe in probes(c) {
                let path = s(&probe["httpGet"]["path"]);
                let url = pg.internal_url(path);
                let ok = common::eventually(Duration::from_secs(10), || async {
                    get(&url).await.0 == http::StatusCode::OK
                })
                .await;
                assert!(ok, "{file}: {} probe {path} never answered 200", name(w));
            }
        }
    }
}

/// The container's args and env as flags, minus what only makes sense in a
/// cluster (addresses, peers, the volume path) or what the harness cannot
/// read (JSON logs hide the bound addresses from it), plus local equivalents.
fn local_args(c: &Value, data_dir: &Path) -> Vec<String> {
    const CLUSTER_ONLY: [&str; 5] = [
        "--listen",
        "--internal-listen",
        "--peer",
        "--data-dir",
        "--log-format",
    ];
    let (args, env) = pollgate_command(c);
    let mut out: Vec<String> = args
        .into_iter()
        .filter(|a| {
            !CLUSTER_ONLY
                .iter()
                .any(|f| a == f || a.starts_with(&format!("{f}=")))
        })
        .collect();
    assert!(
        out.iter().all(|a| a.starts_with("--") && a.contains('=')),
        "write manifest args as --flag=value so this test can filter them: {out:?}"
    );
    for (k, v) in env {
        let flag = k["POLLGATE_".len()..]
            .to_ascii_lowercase()
            .replace('_', "-");
        out.push(format!("--{flag}={v}"));
    }
    out.extend(["--listen=127.0.0.1:0", "--internal-listen=127.0.0.1:0"].map(String::from));
    out.push(format!("--data-dir={}", data_dir.display()));
    out
}
