//! `GET /v1/config`, `PUT /v1/config` and the gossip endpoints on the
//! internal listener. A PUT is validated whole, stamped (unix ms, node_id)
//! and applied locally; gossip carries it to every replica (LWW).

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Map, Value};

use crate::body::Body;
use crate::body::{json, typed};
use crate::error::Error;
use crate::inbound::{authorize, read_body};
use crate::state::State;
use crate::tunables::{Stamp, Values};

use super::auth::unix_ms;

/// Largest config PUT body; the document is a handful of numbers.
const MAX_CONFIG_BODY: u64 = 16 << 10;
/// Largest gossip request: push batches and pull requests are far smaller.
const MAX_GOSSIP_BODY: u64 = 16 << 20;

/// The accepted fields and their ranges (inclusive).
const FIELDS: [(&str, u64, u64); 6] = [
    ("heartbeat_interval_ms", 1_000, 300_000),
    ("ghost_timeout_ms", 1_000, 3_600_000),
    ("poll_interval_hint_s", 1, 3_600),
    ("push_admission_per_s", 1, 1_000_000),
    ("max_age_ms", 0, 86_400_000),
    ("max_age_s", 0, 86_400),
];

pub fn get(state: &State) -> Response<Body> {
    json(StatusCode::OK, format!("{}\n", document(state)))
}

fn document(state: &State) -> Value {
    let v = state.tunables.get();
    let stamp = state.tunables.stamp();
    serde_json::json!({
        "heartbeat_interval_ms": v.heartbeat_interval_ms,
        "ghost_timeout_ms": v.ghost_timeout_ms,
        "poll_interval_hint_s": v.poll_interval_hint_s,
        "push_admission_per_s": v.push_admission_per_s,
        "max_age_ms": v.max_age_ms,
        "max_age_s": v.max_age_ms / 1000,
        "stamp": {"at_ms": stamp.at_ms, "node": stamp.node},
    })
}

/// Partial update: fields not given keep their current values.
pub async fn put(state: &State, req: Request<Incoming>) -> Result<Response<Body>, Error> {
    authorize(state.cfg.admin_token.as_deref(), &req, "admin_token")?;
    let body = read_body(req, MAX_CONFIG_BODY).await?;
    let fields: Map<String, Value> = serde_json::from_slice(&body)
        .map_err(|e| Error::BadRequestOwned(format!("expected a JSON object of tunables: {e}")))?;
    let (values, stamp) = apply_admin(state, &fields)?;
    state.cluster.config_changed();
    tracing::info!(?stamp, ?values, "cluster config changed by admin");
    Ok(json(StatusCode::OK, format!("{}\n", document(state))))
}

/// Applies `fields` on top of the current values with a stamp strictly after
/// the current one. A gossiped change can land between reading and applying;
/// then the update is recomputed on the newer values rather than dropped.
fn apply_admin(state: &State, fields: &Map<String, Value>) -> Result<(Values, Stamp), Error> {
    loop {
        let cur = state.tunables.stamp();
        let values = update(state.tunables.get(), fields).map_err(Error::BadRequestOwned)?;
        // Strictly after the current stamp, so a change made here wins even if
        // this replica's clock is behind the one that made the last change.
        let stamp = Stamp {
            at_ms: unix_ms().max(cur.at_ms.saturating_add(1)),
            node: state.cfg.node_id.clone(),
        };
        if state.tunables.apply(&values, stamp.clone()) {
            return Ok((values, stamp));
        }
    }
}

/// Applies `fields` to `cur`; the error names the first bad field.
pub fn update(mut cur: Values, fields: &Map<String, Value>) -> Result<Values, String> {
    let mut max_age: Option<(u64, &str)> = None;
    for (name, value) in fields {
        let (_, lo, hi) = FIELDS
            .iter()
            .find(|(n, ..)| n == name)
            .ok_or_else(|| format!("{name}: unknown field (known: {})", known()))?;
        let n = value
            .as_u64()
            .ok_or_else(|| format!("{name}: must be a whole number, got {value}"))?;
        if n < *lo || n > *hi {
            return Err(format!("{name}: {n} is out of range {lo}..={hi}"));
        }
        let ms = if name == "max_age_s" { n * 1000 } else { n };
        match name.as_str() {
            "heartbeat_interval_ms" => cur.heartbeat_interval_ms = n,
            "ghost_timeout_ms" => cur.ghost_timeout_ms = n,
            "poll_interval_hint_s" => cur.poll_interval_hint_s = n,
            "push_admission_per_s" => cur.push_admission_per_s = n,
            _ => match max_age {
                Some((prev, other)) if prev != ms => {
                    return Err(format!("{name}: disagrees with {other}"))
                }
                _ => max_age = Some((ms, name)),
            },
        }
    }
    if let Some((ms, _)) = max_age {
        cur.max_age_ms = ms;
    }
    check(&cur)?;
    Ok(cur)
}

/// Cross-field rules, also applied to values arriving by gossip.
pub fn check(v: &Values) -> Result<(), String> {
    // Strictly longer, as the `ghost_timeout` config key requires: a pong
    // can only follow a ping.
    if v.ghost_timeout_ms <= v.heartbeat_interval_ms {
        return Err(format!(
            "ghost_timeout_ms: {} must be longer than heartbeat_interval_ms ({})",
            v.ghost_timeout_ms, v.heartbeat_interval_ms
        ));
    }
    Ok(())
}

/// Longest timer gossip may set: far beyond any real setting, far below
/// where `Instant + Duration` overflows.
const MAX_TIMER_MS: u64 = 365 * 86_400_000;

/// What gossip must never apply, whatever the sender: a timer of 0 spins
/// every socket's ping loop, one near u64::MAX panics in `Instant + Duration`.
/// Deliberately looser than the PUT ranges: a PUT carries the replica's
/// local seeds for the fields it does not name (e.g. a 100 ms heartbeat from
/// config), and refusing those here would split the cluster's values.
pub fn sane(v: &Values) -> Result<(), String> {
    for (name, ms) in [
        ("heartbeat_interval_ms", v.heartbeat_interval_ms),
        ("ghost_timeout_ms", v.ghost_timeout_ms),
    ] {
        if !(1..=MAX_TIMER_MS).contains(&ms) {
            return Err(format!("{name}: {ms} is out of range 1..={MAX_TIMER_MS}"));
        }
    }
    check(v)
}

fn known() -> String {
    FIELDS.map(|(n, ..)| n).join(", ")
}

/// `POST /v1/cluster/{push,pull}`: a sealed frame in, a sealed frame out.
/// Refusals are 401 with the reason (the sender logs it; no secret is in it).
pub async fn gossip(state: &State, req: Request<Incoming>) -> Result<Response<Body>, Error> {
    let frame = read_body(req, MAX_GOSSIP_BODY).await?;
    match super::blocking(|| state.cluster.handle(state, frame)) {
        Ok(reply) => Ok(typed(StatusCode::OK, "application/octet-stream", reply)),
        Err(r) => Err(Error::GossipRefused(r.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> Values {
        Values {
            heartbeat_interval_ms: 25_000,
            ghost_timeout_ms: 50_000,
            poll_interval_hint_s: 60,
            push_admission_per_s: 2000,
            max_age_ms: 60_000,
        }
    }

    fn up(json: &str) -> Result<Values, String> {
        update(values(), &serde_json::from_str(json).unwrap())
    }

    #[test]
    fn partial_updates_keep_the_rest() {
        let v = up(r#"{"heartbeat_interval_ms": 5000}"#).unwrap();
        assert_eq!(v.heartbeat_interval_ms, 5000);
        assert_eq!(v.ghost_timeout_ms, 50_000);
        assert_eq!(up(r#"{"max_age_s": 30}"#).unwrap().max_age_ms, 30_000);
        assert_eq!(
            up(r#"{"max_age_s": 30, "max_age_ms": 30000}"#)
                .unwrap()
                .max_age_ms,
            30_000
        );
    }

    #[test]
    fn bad_fields_are_named() {
        for (json, field) in [
            (r#"{"nope": 1}"#, "nope: unknown field"),
            (
                r#"{"heartbeat_interval_ms": 10}"#,
                "heartbeat_interval_ms: 10 is out of range",
            ),
            (
                r#"{"poll_interval_hint_s": "5"}"#,
                "poll_interval_hint_s: must be a whole number",
            ),
            (
                r#"{"ghost_timeout_ms": 25000}"#,
                "ghost_timeout_ms: 25000 must be longer",
            ),
            (r#"{"max_age_s": 1, "max_age_ms": 5}"#, "disagrees"),
        ] {
            let e = up(json).unwrap_err();
            assert!(e.contains(field), "{json}: {e}");
        }
    }

    #[test]
    fn gossiped_timers_are_sane() {
        let zero_heartbeat = Values {
            heartbeat_interval_ms: 0,
            ..values()
        };
        let e = sane(&zero_heartbeat).unwrap_err();
        assert!(e.contains("heartbeat_interval_ms"), "{e}");
        let huge_ghost = Values {
            ghost_timeout_ms: u64::MAX,
            ..values()
        };
        assert!(sane(&huge_ghost).unwrap_err().contains("ghost_timeout_ms"));
        // A local seed outside the PUT ranges still travels.
        let fast = Values {
            heartbeat_interval_ms: 100,
            ghost_timeout_ms: 300,
            push_admission_per_s: 0,
            ..values()
        };
        assert!(sane(&fast).is_ok());
        assert!(sane(&values()).is_ok());
    }
}
