//! docs/integrate.md's Express app, run for real behind pollgate: it answers
//! polls with `X-Pollgate-Version`, publishes after commit, and pollgate
//! answers the next poll from memory.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::{get, send, Pollgate, TOKEN};
use tokio::net::{TcpListener, TcpStream};

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/examples/express")
}

#[test]
fn the_guide_shows_the_tested_app_verbatim() {
    let app = std::fs::read_to_string(example_dir().join("app.js")).unwrap();
    let guide = std::fs::read_to_string(example_dir().join("../../integrate.md")).unwrap();
    assert!(
        guide.contains(&format!("```js\n{app}```")),
        "docs/integrate.md must quote docs/examples/express/app.js as it is"
    );
}

/// The Express app as a child process; killed on drop.
struct App {
    child: Child,
    port: u16,
}

impl App {
    fn start(node: &Path, pollgate_internal: &str) -> App {
        let mut child = Command::new(node)
            .arg("app.js")
            .current_dir(example_dir())
            .env("PORT", "0")
            .env("POLLGATE_URL", format!("http://{pollgate_internal}"))
            .env("POLLGATE_PUBLISH_TOKEN", TOKEN)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn node app.js");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        // Keep reading so a later log line never meets a closed pipe.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        let port = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("app.js said {line:?}"))
            .parse()
            .unwrap();
        App { child, port }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// pollgate must know the app's address and the app pollgate's: the test
/// holds a port of its own for pollgate's upstream and relays it to the app
/// once both run (no port is guessed).
async fn relay(listener: TcpListener, port: u16) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            if let Ok(mut out) = TcpStream::connect(("127.0.0.1", port)).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
            }
        });
    }
}

#[tokio::test]
async fn express_app_publishes_after_commit_and_polls_become_hits() {
    let Some(node) = common::tool::require("node", "nodejs") else {
        return;
    };
    if !example_dir().join("node_modules/express").is_dir() {
        let msg = "docs/examples/express/node_modules missing: run scripts/install-deps.sh";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
        return eprintln!("SKIPPED: {msg}");
    }
    let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}", front.local_addr().unwrap());
    let pg = Pollgate::start(&upstream, &[]);
    let app = App::start(&node, &pg.internal.to_string());
    let relay = tokio::spawn(relay(front, app.port));

    // A change through pollgate's pass-through: the app commits, then publishes.
    let (status, _, body) = send(
        "POST",
        &pg.url("/projects/p1/events"),
        &[("content-type", "application/json")],
        br#"{"text":"hello"}"#.to_vec(),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, _, body) = get(&pg.internal_url("/v1/versions/p1")).await;
    assert_eq!(status, 200, "the app published p1: {body}");
    assert!(body.contains("\"version\":1"), "{body}");

    // A client that holds version 1 is answered from memory.
    let (status, headers, _) = get(&pg.url("/projects/p1/changes?since=1")).await;
    assert_eq!(status, 304);
    assert_eq!(headers["x-pollgate"], "hit");
    // A client behind is forwarded and gets the events from the app.
    let (status, headers, body) = get(&pg.url("/projects/p1/changes?since=0")).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-pollgate-version"], "1");
    assert!(body.contains("hello"), "{body}");
    // Nothing else reached the app: the hit stayed in pollgate.
    assert_eq!(
        pg.metric("pollgate_requests_total{outcome=\"hit\"}").await,
        1.0
    );
    assert_eq!(
        pg.metric("pollgate_requests_total{outcome=\"stale\"}")
            .await,
        1.0
    );
    relay.abort();
}

/// The Django snippet is not run (no Django here), but it must parse.
#[test]
fn the_python_snippet_parses() {
    let Some(python) = common::tool::require("python3", "python3") else {
        return;
    };
    let guide = std::fs::read_to_string(example_dir().join("../../integrate.md")).unwrap();
    let start = guide.find("```python\n").expect("a python block") + "```python\n".len();
    let len = guide[start..].find("```").unwrap();
    let mut child = Command::new(python)
        .args(["-c", "import ast, sys; ast.parse(sys.stdin.read())"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    child
        .stdin
        .take()
        .unwrap()
        .write_all(&guide.as_bytes()[start..start + len])
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
