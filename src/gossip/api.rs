//! `GET /v1/config`, `PUT /v1/config` and the gossip endpoints on the
//! internal listener. A PUT is validated whole, stamped (unix ms, node_id)
//! and applied locally; gossip carries it to every replica (LWW).

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Map, Value};

use crate::body::{json, typed, Body};
use crate::error::Error;
use crate::inbound::{authorize, read_body};
use crate::state::State;
use crate::tunables::{Stamp, Values};

use crate::cluster::auth::unix_ms;

/// Largest config PUT body; the document is a handful of numbers.
const MAX_CONFIG_BODY: u64 = 16 << 10;
/// Gossip landing between read and apply this many times in a row is not a
/// race any more but a stamp this replica cannot beat.
const ADMIN_ATTEMPTS: usize = 8;
/// Largest gossip request: push batches and pull requests are far smaller.
const MAX_GOSSIP_BODY: u64 = 16 << 20;

pub fn get(state: &State) -> Response<Body> {
    json(StatusCode::OK, format!("{}\n", document(state)))
}

fn document(state: &State) -> Value {
    state.tunables.get().document(&state.tunables.stamp())
}

/// Partial update: fields not given keep their current values.
pub async fn put(state: &State, req: Request<Incoming>) -> Result<Response<Body>, Error> {
    authorize(state.live.secrets().admin.as_slice(), &req, "admin_token")?;
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
/// then the update is recomputed on the newer values rather than dropped, a
/// bounded number of times: a stamp that can never be beaten must give an
/// error, not a spinning handler.
fn apply_admin(state: &State, fields: &Map<String, Value>) -> Result<(Values, Stamp), Error> {
    for _ in 0..ADMIN_ATTEMPTS {
        let cur = state.tunables.stamp();
        let values = state
            .tunables
            .get()
            .update(fields)
            .map_err(Error::BadRequestOwned)?;
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
    Err(Error::Conflict(
        "cluster config kept changing while this change was applied; retry",
    ))
}

/// `POST /v1/cluster/{deltas,pull}`: a sealed frame in, a sealed frame out.
/// Refusals are 401 with the reason (the sender logs it; no secret is in it).
/// A frame sealed for another replica's node_id is answered with our identity.
pub async fn gossip(state: &State, req: Request<Incoming>) -> Result<Response<Body>, Error> {
    let frame = read_body(req, MAX_GOSSIP_BODY).await?;
    let handle = || state.cluster.handle(&state.table, &state.tunables, frame);
    match crate::cluster::blocking(handle) {
        Ok(reply) => Ok(typed(StatusCode::OK, "application/octet-stream", reply)),
        Err(r) => Err(Error::GossipRefused(r.to_string())),
    }
}
