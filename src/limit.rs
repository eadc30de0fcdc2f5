//! Per-client limits (the 7pace lesson: "the API allowed unlimited
//! queries"): a token bucket per client address on what costs the app or
//! pollgate something (forwarded requests, new push connections), and a cap
//! on the upstream slots one client may hold. Hits from memory are not limited.
//!
//! Memory is bounded whatever the number of clients: buckets live in
//! [`SHARDS`] maps of at most `cap / SHARDS` entries each. A full shard first
//! forgets idle clients (bucket refilled, nothing in flight: forgetting them
//! changes nothing), then, if a flood of distinct addresses left none idle,
//! the half it looks at first. A forgotten client starts again with a full
//! bucket, so a flood of addresses can only be as strong as its addresses.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hashbrown::HashMap;
use http::HeaderMap;
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::config::{Cidr, Config};
use crate::error::{jittered, Error};
use crate::metrics::{family, gauge, Counter, Metrics};

const SHARDS: usize = 64;
/// Buckets kept at most (all shards): ~40 B each, so ~10 MiB at the cap.
pub const DEFAULT_CAP: usize = 256 * 1024;

/// What a client is asking for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cost {
    Forward,
    Push,
}

pub struct ClientLimits {
    /// Rate, burst and trusted proxies: swapped whole by a reload; the
    /// buckets stay (a client keeps what it had spent).
    rates: ArcSwap<Rates>,
    /// Upstream slots one client may hold at once.
    max_inflight: u32,
    shard_cap: usize,
    shards: Box<[Mutex<HashMap<IpAddr, Bucket>>]>,
    /// Picks the shard; seeded once (a fresh seed per call would scatter a client).
    hasher: hashbrown::DefaultHashBuilder,
    start: Instant,
    limited: [Counter; 2],
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f32,
    /// Milliseconds since `start` of the last refill.
    at_ms: u32,
    inflight: u32,
}

/// The reloadable part: `client_rate_per_s`, `client_burst`, `trusted_proxies`.
#[derive(Debug)]
struct Rates {
    /// Tokens per second; 0 turns rate limiting off.
    rate: f64,
    burst: f64,
    trusted: Vec<Cidr>,
}

impl Rates {
    fn from_config(cfg: &Config) -> Rates {
        let rate = cfg.client_rate_per_s as f64;
        let burst = match cfg.client_burst {
            0 => (2.0 * rate).max(1.0),
            b => b as f64,
        };
        Rates {
            rate,
            burst,
            trusted: cfg.trusted_proxies.clone(),
        }
    }
}

/// An upstream slot held by one client; dropping it gives the slot back.
pub struct Held {
    limits: Arc<ClientLimits>,
    ip: IpAddr,
}

impl ClientLimits {
    pub fn new(cfg: &Config, metrics: &Metrics) -> Arc<Self> {
        Self::with_cap(cfg, metrics, DEFAULT_CAP)
    }

    pub fn with_cap(cfg: &Config, metrics: &Metrics, cap: usize) -> Arc<Self> {
        let limits = Arc::new(ClientLimits {
            rates: ArcSwap::from_pointee(Rates::from_config(cfg)),
            max_inflight: share_of(cfg.upstream_max_inflight),
            shard_cap: (cap / SHARDS).max(1),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: Default::default(),
            start: Instant::now(),
            limited: Default::default(),
        });
        let weak = Arc::downgrade(&limits);
        metrics.register(Box::new(move |o| {
            if let Some(l) = weak.upgrade() {
                l.render(o);
            }
        }));
        limits
    }

    /// Applies a reload's `client_rate_per_s`, `client_burst` and
    /// `trusted_proxies`. Buckets are kept, capped at the new burst when
    /// next refilled; turning the limit on starts every client full.
    pub fn set_rates(&self, cfg: &Config) {
        self.rates.store(Arc::new(Rates::from_config(cfg)));
    }

    pub fn enabled(&self) -> bool {
        self.rates.load().rate > 0.0
    }

    /// The address a request is charged to: the peer, or the client named
    /// in `X-Forwarded-For` when the peer is a trusted proxy (the rightmost
    /// address that is not itself a trusted proxy).
    pub fn client_ip(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        let ip = peer.ip();
        if !self.is_trusted(ip) {
            return ip;
        }
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|a| a.trim().parse::<IpAddr>().ok())
            .collect::<Vec<_>>();
        let client = forwarded.into_iter().rev().find(|a| !self.is_trusted(*a));
        client.unwrap_or(ip)
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.rates.load().trusted.iter().any(|c| c.contains(ip))
    }

    /// Takes one token for a new push connection, or 429.
    pub fn admit_push(&self, ip: IpAddr) -> Result<(), Error> {
        if !self.enabled() {
            return Ok(());
        }
        self.take(ip, Cost::Push, false).map(|_| ())
    }

    /// Takes one token and one of this client's upstream slots, or 429.
    pub fn admit_forward(self: &Arc<Self>, ip: IpAddr) -> Result<Option<Held>, Error> {
        if !self.enabled() {
            return Ok(None);
        }
        self.take(ip, Cost::Forward, true)?;
        Ok(Some(Held {
            limits: self.clone(),
            ip,
        }))
    }

    fn take(&self, ip: IpAddr, cost: Cost, hold: bool) -> Result<(), Error> {
        let now_ms = self.start.elapsed().as_millis() as u32;
        let r = self.rates.load();
        let mut shard = self.shard(ip).lock();
        if !shard.contains_key(&ip) && shard.len() >= self.shard_cap {
            self.make_room(&r, &mut shard, now_ms);
        }
        let b = shard.entry(ip).or_insert(Bucket {
            tokens: r.burst as f32,
            at_ms: now_ms,
            inflight: 0,
        });
        refill(&r, b, now_ms);
        if hold && b.inflight >= self.max_inflight {
            drop(shard);
            return Err(self.refuse(cost, Duration::from_secs(1)));
        }
        if b.tokens < 1.0 {
            let wait = (1.0 - b.tokens as f64) / r.rate;
            drop(shard);
            return Err(self.refuse(cost, Duration::from_secs_f64(wait)));
        }
        b.tokens -= 1.0;
        b.inflight += u32::from(hold);
        Ok(())
    }

    /// Forgets idle clients; if none were idle, half the shard (never a
    /// client holding a slot: its `Held` must find it again).
    fn make_room(&self, r: &Rates, shard: &mut HashMap<IpAddr, Bucket>, now_ms: u32) {
        let full_after_ms = (r.burst / r.rate * 1000.0) as u32;
        shard.retain(|_, b| b.inflight > 0 || now_ms.saturating_sub(b.at_ms) < full_after_ms);
        if shard.len() >= self.shard_cap {
            let mut drop_n = shard.len() / 2;
            shard.retain(|_, b| {
                let keep = b.inflight > 0 || drop_n == 0;
                drop_n -= usize::from(!keep);
                keep
            });
        }
    }

    fn refuse(&self, cost: Cost, wait: Duration) -> Error {
        self.limited[cost as usize].inc();
        Error::TooManyRequests {
            retry_after: jittered(wait),
        }
    }

    fn shard(&self, ip: IpAddr) -> &Mutex<HashMap<IpAddr, Bucket>> {
        use std::hash::BuildHasher;
        let h = self.hasher.hash_one(ip) as usize;
        &self.shards[h % SHARDS]
    }

    /// Buckets held right now (all shards).
    pub fn buckets(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// Bytes the bucket maps hold (their allocated capacity).
    pub fn memory_bytes(&self) -> usize {
        let per = std::mem::size_of::<(IpAddr, Bucket)>() + 1;
        self.shards.iter().map(|s| s.lock().capacity() * per).sum()
    }

    fn render(&self, o: &mut String) {
        let rows = [
            ("forward", self.limited[0].get()),
            ("push", self.limited[1].get()),
        ];
        #[rustfmt::skip]
        family(o, "counter", "pollgate_client_limited_total", "Requests refused 429 by the per-client limit.", "what", rows);
        #[rustfmt::skip]
        gauge(o, "pollgate_client_buckets", "Per-client buckets held (bounded).", self.buckets() as i64);
    }
}

fn refill(r: &Rates, b: &mut Bucket, now_ms: u32) {
    let dt = now_ms.saturating_sub(b.at_ms) as f64 / 1000.0;
    b.tokens = (b.tokens as f64 + dt * r.rate).min(r.burst) as f32;
    b.at_ms = now_ms;
}

/// A quarter of the upstream slots, at least one: four abusive clients
/// together can fill the pool, one alone cannot.
fn share_of(max_inflight: usize) -> u32 {
    (max_inflight / 4).max(1) as u32
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut shard = self.limits.shard(self.ip).lock();
        if let Some(b) = shard.get_mut(&self.ip) {
            b.inflight = b.inflight.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rate: u64, burst: u64, cap: usize) -> Arc<ClientLimits> {
        let cfg = Config {
            client_rate_per_s: rate,
            client_burst: burst,
            upstream_max_inflight: 8,
            trusted_proxies: vec!["10.0.0.0/8".parse().unwrap()],
            ..Config::default()
        };
        ClientLimits::with_cap(&cfg, &Metrics::default(), cap)
    }

    fn ip(n: u32) -> IpAddr {
        IpAddr::from(std::net::Ipv4Addr::from(0x0b00_0000 + n))
    }

    #[test]
    fn a_burst_then_429_with_a_whole_second_hint() {
        let l = limits(1, 3, 1024);
        let held: Vec<_> = (0..2).map(|_| l.admit_forward(ip(1)).unwrap()).collect();
        assert!(l.admit_push(ip(1)).is_ok());
        match l.admit_push(ip(1)) {
            Err(Error::TooManyRequests { retry_after }) => {
                assert!(retry_after >= Duration::from_secs(1))
            }
            other => panic!("{other:?}"),
        }
        assert!(
            l.admit_push(ip(2)).is_ok(),
            "another client is not affected"
        );
        drop(held);
    }

    #[test]
    fn one_client_holds_at_most_a_quarter_of_the_slots() {
        let l = limits(1000, 1000, 1024);
        let held: Vec<_> = (0..2).map(|_| l.admit_forward(ip(1)).unwrap()).collect();
        assert!(l.admit_forward(ip(1)).is_err(), "8 slots / 4 = 2");
        drop(held);
        assert!(l.admit_forward(ip(1)).is_ok(), "slots come back on drop");
    }

    #[test]
    fn rates_reload_and_buckets_stay() {
        let l = limits(0, 0, 1024);
        assert!(!l.enabled());
        let on = Config {
            client_rate_per_s: 1,
            client_burst: 1,
            ..Config::default()
        };
        l.set_rates(&on);
        assert!(l.admit_push(ip(1)).is_ok());
        assert!(l.admit_push(ip(1)).is_err(), "burst 1, now spent");
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "1.2.3.4".parse().unwrap());
        let via = |l: &ClientLimits| l.client_ip("10.1.1.1:5".parse().unwrap(), &h);
        assert_eq!(via(&l), ip_of("10.1.1.1"), "10/8 no longer trusted");
        l.set_rates(&Config {
            trusted_proxies: vec!["10.0.0.0/8".parse().unwrap()],
            ..Config::default()
        });
        assert!(l.admit_push(ip(1)).is_ok(), "off again");
        assert_eq!(via(&l), ip_of("1.2.3.4"), "trusted again");
    }

    fn ip_of(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_counts_only_behind_a_trusted_proxy() {
        let l = limits(1, 1, 1024);
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "1.2.3.4, 10.0.0.9".parse().unwrap());
        let via_proxy = l.client_ip("10.1.1.1:5".parse().unwrap(), &h);
        assert_eq!(via_proxy, "1.2.3.4".parse::<IpAddr>().unwrap());
        let direct = l.client_ip("8.8.8.8:5".parse().unwrap(), &h);
        assert_eq!(direct, "8.8.8.8".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn a_million_distinct_clients_stay_within_the_cap() {
        let l = limits(10, 20, DEFAULT_CAP);
        for n in 0..1_000_000 {
            let _ = l.admit_push(ip(n));
        }
        let bytes = l.memory_bytes();
        eprintln!(
            "1M distinct clients: {} buckets, {} KiB of maps",
            l.buckets(),
            bytes >> 10
        );
        assert!(l.buckets() <= DEFAULT_CAP);
        assert!(bytes < 16 << 20, "{bytes} bytes");
    }
}
