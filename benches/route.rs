//! Route matching throughput: per template kind, and a sweep over how many
//! routes are configured (matching route last), each beside a naive
//! allocating matcher so the ratio is visible in one report.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, HeaderValue};
use pollgate::route::Routes;

const QUERY: &str = "/projects/{key}/changes?since={version}";
const PATH: &str = "/projects/{key}/version/{version}";
const HEADER: &str = "/projects/{key}/state header:If-None-Match";

/// One request per template kind, shaped like a real browser poll.
struct Req {
    kind: &'static str,
    template: &'static str,
    path: &'static str,
    query: Option<&'static str>,
    headers: HeaderMap,
}

fn requests() -> Vec<Req> {
    let mut inm = HeaderMap::new();
    inm.insert("accept", HeaderValue::from_static("application/json"));
    inm.insert("if-none-match", HeaderValue::from_static("W/\"1234567\""));
    vec![
        Req {
            kind: "query",
            template: QUERY,
            path: "/projects/proj-123456/changes",
            query: Some("client=web&since=1234567"),
            headers: HeaderMap::new(),
        },
        Req {
            kind: "path",
            template: PATH,
            path: "/projects/proj-123456/version/1234567",
            query: None,
            headers: HeaderMap::new(),
        },
        Req {
            kind: "header",
            template: HEADER,
            path: "/projects/proj-123456/state",
            query: None,
            headers: inm,
        },
    ]
}

/// The obvious implementation: split everything into owned strings per
/// request, then compare. Same semantics for the valid-request case.
struct Naive {
    routes: Vec<(Vec<String>, NaiveVersion)>,
}

enum NaiveVersion {
    Path,
    Query(String),
    Header(String),
}

impl Naive {
    fn new(templates: &[String]) -> Naive {
        let routes = templates.iter().map(|t| naive_route(t)).collect();
        Naive { routes }
    }

    fn matches(
        &self,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Option<(String, Option<u64>)> {
        let parts: Vec<String> = path.split('/').map(String::from).collect();
        for (segs, from) in &self.routes {
            if segs.len() != parts.len() {
                continue;
            }
            let mut key = None;
            let mut version = None;
            let fits = segs.iter().zip(&parts).all(|(s, p)| match s.as_str() {
                "{key}" => {
                    key = Some(p.clone());
                    true
                }
                "{version}" => {
                    version = Some(p.clone());
                    true
                }
                lit => lit == p,
            });
            if !fits {
                continue;
            }
            let raw = match from {
                NaiveVersion::Path => version,
                NaiveVersion::Query(name) => naive_query(query.unwrap_or("")).remove(name),
                NaiveVersion::Header(name) => headers
                    .get(name.as_str())
                    .and_then(|v| v.to_str().ok())
                    .map(|v| v.split(',').next().unwrap_or("").to_string())
                    .map(|v| {
                        v.trim()
                            .trim_start_matches("W/")
                            .trim_matches('"')
                            .to_string()
                    }),
            };
            return Some((key?, raw.and_then(|v| v.parse().ok())));
        }
        None
    }
}

fn naive_route(t: &str) -> (Vec<String>, NaiveVersion) {
    let (target, header) = match t.split_once(' ') {
        Some((p, h)) => (p, Some(h.trim_start_matches("header:").to_lowercase())),
        None => (t, None),
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q.split('=').next().unwrap().to_string())),
        None => (target, None),
    };
    let from = match (query, header) {
        (Some(q), _) => NaiveVersion::Query(q),
        (_, Some(h)) => NaiveVersion::Header(h),
        _ => NaiveVersion::Path,
    };
    (path.split('/').map(String::from).collect(), from)
}

fn naive_query(q: &str) -> std::collections::HashMap<String, String> {
    let mut map = std::collections::HashMap::new();
    for pair in q.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        map.entry(k.to_string()).or_insert_with(|| v.to_string());
    }
    map
}

fn templates(kind_template: &str, n: usize) -> Vec<String> {
    // Fillers share the prefix and segment count with the real route, so each
    // is rejected only at its last literal: the worst case for a linear scan.
    let mut t: Vec<String> = (1..n)
        .map(|i| format!("/projects/{{key}}/changes{i}?since={{version}}"))
        .collect();
    t.push(kind_template.to_string());
    t
}

fn by_kind(c: &mut Criterion) {
    let mut g = c.benchmark_group("route_kind");
    for req in requests() {
        let t = templates(req.template, 1);
        let routes = Routes::parse(&t).unwrap();
        let naive = Naive::new(&t);
        assert!(naive.matches(req.path, req.query, &req.headers).unwrap().1 == Some(1234567));
        g.bench_function(BenchmarkId::new("pollgate", req.kind), |b| {
            b.iter(|| routes.matches(black_box(req.path), black_box(req.query), &req.headers))
        });
        g.bench_function(BenchmarkId::new("naive", req.kind), |b| {
            b.iter(|| naive.matches(black_box(req.path), black_box(req.query), &req.headers))
        });
    }
    g.finish();
}

fn by_route_count(c: &mut Criterion) {
    let req = requests().swap_remove(0);
    for (name, naive_impl) in [("route_count", false), ("route_count_naive", true)] {
        let mut g = c.benchmark_group(name);
        for n in [1usize, 4, 16] {
            let t = templates(req.template, n);
            let routes = Routes::parse(&t).unwrap();
            let naive = Naive::new(&t);
            g.bench_function(BenchmarkId::from_parameter(n), |b| {
                if naive_impl {
                    b.iter(|| {
                        naive.matches(black_box(req.path), black_box(req.query), &req.headers)
                    })
                } else {
                    b.iter(|| {
                        routes.matches(black_box(req.path), black_box(req.query), &req.headers)
                    })
                }
            });
        }
        g.finish();
    }
}

fn config() -> Criterion {
    // Short runs: the whole file finishes in well under a minute on 2 cores.
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = by_kind, by_route_count
}
criterion_main!(benches);
