//! The internal listener: publish API, version lookup, metrics, health,
//! cluster config and gossip.
//! Kept off the public port so operators can firewall it.

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::body::{json, text, typed, Body};
use crate::error::Error;
use crate::feed::publish;
use crate::gossip::api as cluster_api;
use crate::state::State;

pub async fn handle(state: &State, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    let res = match (req.method(), path) {
        (&Method::GET, "/") => Ok(crate::status::page()),
        (&Method::GET, "/metrics") => Ok(metrics(state)),
        (&Method::GET, "/healthz") => Ok(text(StatusCode::OK, "ok\n")),
        (&Method::GET, "/readyz") => Ok(readyz(state)),
        (&Method::POST, "/v1/versions") => publish::post(state, req).await,
        (_, "/v1/versions") => Err(Error::MethodNotAllowed),
        (&Method::POST, "/v1/reload") => reload(state, &req),
        (_, "/v1/reload") => Err(Error::MethodNotAllowed),
        (&Method::GET, "/v1/config") => Ok(cluster_api::get(state)),
        (&Method::PUT, "/v1/config") => cluster_api::put(state, req).await,
        (_, "/v1/config") => Err(Error::MethodNotAllowed),
        // `/v1/cluster/push` is the pre-0.2 name of `deltas`, kept for rolling upgrades.
        (&Method::POST, "/v1/cluster/deltas" | "/v1/cluster/pull" | "/v1/cluster/push")
            if state.cluster.serves_gossip =>
        {
            cluster_api::gossip(state, req).await
        }
        (&Method::GET, p) if p.starts_with("/v1/versions/") => {
            publish::get(state, &p["/v1/versions/".len()..])
        }
        _ => Err(Error::NotFound),
    };
    res.unwrap_or_else(Error::into_response)
}

/// The restart-only keys' reasons go in `why` so `restart_needed` stays a
/// plain list of names.
fn applied_json(a: &crate::reload::Applied) -> String {
    let names: Vec<_> = a.restart_needed.iter().map(|(k, _)| *k).collect();
    let why: serde_json::Map<_, _> = a
        .restart_needed
        .iter()
        .map(|(k, w)| (k.to_string(), serde_json::Value::from(*w)))
        .collect();
    serde_json::json!({"changed": a.changed, "restart_needed": names, "why": why, "pinned": a.pinned, "warnings": a.warnings})
        .to_string()
}

fn metrics(state: &State) -> Response<Body> {
    state.metrics.keys.set(state.table.len() as i64);
    state.metrics.ready.set(i64::from(state.is_ready()));
    typed(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        state.metrics.render(),
    )
}

/// `POST /v1/reload` (admin token): what SIGHUP does, with the outcome as
/// JSON — 200 `{"changed":[..],"restart_needed":[..],"why":{..},"pinned":[..],"warnings":[..]}`,
/// or 400 with every error of a refused config (nothing changed).
fn reload(state: &State, req: &Request<Incoming>) -> Result<Response<Body>, Error> {
    crate::inbound::authorize(state.live.secrets().admin.as_slice(), req, "admin_token")?;
    let result = state.reload();
    crate::reload::log(&result);
    Ok(match result {
        Ok(a) => json(StatusCode::OK, applied_json(&a)),
        Err(e) => json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": e.to_string()}).to_string(),
        ),
    })
}

fn readyz(state: &State) -> Response<Body> {
    if state.is_ready() {
        text(StatusCode::OK, "ready\n")
    } else {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: catching up with peers\n",
        )
    }
}
