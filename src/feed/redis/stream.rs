//! Redis Streams: entries with fields `key` and `version`, or `body` holding a
//! whole publish batch, read with `XREAD` from the last ID applied.
//!
//! Each round is one `MULTI` of `XINFO STREAM` (per stream) and `XREAD`, so
//! the check "was anything after our position deleted?" and the read see the
//! same stream: a trim can never slip between them unnoticed. Only an idle
//! reader blocks (`XREAD BLOCK`, as a wake-up; the next round re-reads).
//! The position of every stream goes into the snapshot ([`Positions`]), so a
//! restart resumes where the snapshot's contents end.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisResult, Value};
use tokio::sync::watch;

use super::backoff::Backoff;
use super::reply::{self, Entry, Info, StreamId};
use super::stats::{Source, Stats};
use super::{Settings, Target};
use crate::error::Error;
use crate::route::{check_key, parse_version};
use crate::snapshot::Positions;
use crate::state::{State, VersionSource};

/// Entries per stream per round: with 100-version bodies that is 100k
/// versions per round trip, and a reply of a few MB at most.
const COUNT: usize = 1000;
/// An idle reader's wait in `XREAD BLOCK`; also how often an idle complete
/// stream renews its vouching for the table.
const BLOCK_MS: u64 = 1000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// An idle reader renews its vouching at least this many times per `max_age`,
/// so a complete stream never lets an entry expire between two rounds.
const RENEWALS_PER_MAX_AGE: u64 = 4;
/// A reply later than this (beyond the block) means the connection is dead.
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(BLOCK_MS + 5000);

pub struct Reader {
    state: Arc<State>,
    target: Target,
    streams: Vec<String>,
    stats: Arc<Stats>,
    positions: Arc<Positions>,
    complete: bool,
    /// Per stream: the last ID applied; reads resume after it.
    last: Vec<StreamId>,
    /// Per stream: table ms from which no entry was missed (0: none ever was).
    whole_since: Vec<u64>,
    /// Per stream: `last` is a real position (from the snapshot or a read),
    /// so a gap after it lost entries; a first read from 0-0 loses nothing.
    known: Vec<bool>,
}

/// Why [`Reader::follow`] returned without an error.
enum Ended {
    Stop,
    /// A reload changed `redis_url`: reconnect with it.
    NewUrl,
}

/// What one round read.
#[derive(Default)]
struct Round {
    entries: usize,
    /// Some stream gave a full [`COUNT`]: there is more, read again at once.
    full: bool,
}

impl Reader {
    pub fn new(
        state: Arc<State>,
        target: Target,
        s: &Settings,
        stats: Arc<Stats>,
        positions: Arc<Positions>,
    ) -> Reader {
        let saved: Vec<_> = s.streams.iter().map(|n| positions.get(n)).collect();
        Reader {
            last: saved
                .iter()
                .map(|p| p.map_or(StreamId::ZERO, |(ms, seq)| StreamId { ms, seq }))
                .collect(),
            known: saved.iter().map(Option::is_some).collect(),
            whole_since: vec![0; s.streams.len()],
            streams: s.streams.clone(),
            complete: s.stream_complete,
            state,
            target,
            stats,
            positions,
        }
    }

    /// Reads until `stop` turns true, reconnecting with backoff after errors
    /// (and at once, from the last ID applied, when a reload changed `redis_url`).
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut backoff = Backoff::new();
        while !*stop.borrow() {
            match self.connect().await {
                Ok(mut conn) => {
                    self.stats.set_connected(Source::Stream, true);
                    let res = self.follow(&mut conn, &mut stop, &mut backoff).await;
                    self.stats.set_connected(Source::Stream, false);
                    self.stats.set_caught_up(false);
                    match res {
                        Ok(Ended::Stop) => return,
                        Ok(Ended::NewUrl) => {
                            tracing::info!("redis_url changed: Redis streams reconnect with it");
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "Redis stream read failed; reconnecting")
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "Redis stream connect failed; retrying"),
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_delay()) => {}
                _ = stop.changed() => {}
            }
        }
    }

    async fn connect(&mut self) -> Result<MultiplexedConnection, String> {
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let client = self.target.client()?;
        client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
            .map_err(|e| e.to_string())
    }

    /// Rounds until an error (`Err`), `stop`, or a new `redis_url`.
    async fn follow(
        &mut self,
        conn: &mut MultiplexedConnection,
        stop: &mut watch::Receiver<bool>,
        backoff: &mut Backoff,
    ) -> RedisResult<Ended> {
        let mut target = self.target.clone();
        while !*stop.borrow() {
            // A busy stream never waits below: look between rounds too.
            if target.has_changed() {
                return Ok(Ended::NewUrl);
            }
            let issued = self.state.table.now_ms();
            let replies = self.read_round(conn).await?;
            backoff.reset();
            let round = self.absorb(&replies)?;
            self.stats.set_caught_up(!round.full);
            if round.full {
                continue;
            }
            if self.complete {
                // Everything written before `issued` is applied now.
                let from = self.whole_since.iter().copied().max().unwrap_or(0);
                self.state.table.vouch(from, issued);
            }
            if round.entries == 0 {
                let wait = self.wait_cmd();
                tokio::select! {
                    r = wait.query_async::<Value>(conn) => { r?; }
                    _ = target.changed() => return Ok(Ended::NewUrl),
                    _ = stop.changed() => {}
                }
            }
        }
        Ok(Ended::Stop)
    }

    /// `MULTI; XINFO STREAM s…; XREAD COUNT n STREAMS s… id…; EXEC`.
    async fn read_round(&self, conn: &mut MultiplexedConnection) -> RedisResult<Vec<Value>> {
        let mut pipe = redis::pipe();
        // A stream that does not exist yet makes its XINFO an error reply;
        // that must not void the round.
        pipe.atomic().ignore_errors();
        for s in &self.streams {
            pipe.cmd("XINFO").arg("STREAM").arg(s);
        }
        let mut xread = redis::cmd("XREAD");
        xread.arg("COUNT").arg(COUNT);
        pipe.add_command(self.with_streams(xread));
        pipe.query_async(conn).await
    }

    /// An idle wait: returns when any stream has something after our position.
    fn wait_cmd(&self) -> redis::Cmd {
        let max_age = self.state.tunables.max_age_ms();
        let block = match max_age / RENEWALS_PER_MAX_AGE {
            0 => BLOCK_MS,
            quarter => quarter.clamp(10, BLOCK_MS),
        };
        let mut c = redis::cmd("XREAD");
        c.arg("COUNT").arg(1).arg("BLOCK").arg(block);
        self.with_streams(c)
    }

    fn with_streams(&self, mut c: redis::Cmd) -> redis::Cmd {
        c.arg("STREAMS").arg(&self.streams);
        for id in &self.last {
            c.arg(id.to_string());
        }
        c
    }

    /// Checks every stream for a gap, then applies what the XREAD returned.
    fn absorb(&mut self, replies: &[Value]) -> RedisResult<Round> {
        let n = self.streams.len();
        let (Some(read), true) = (replies.get(n), replies.len() == n + 1) else {
            return Err(malformed("EXEC reply has the wrong length"));
        };
        if let Value::ServerError(e) = read {
            return Err(malformed(&format!("XREAD failed: {e:?}")));
        }
        let now = self.state.table.now_ms();
        for (i, info) in replies[..n].iter().enumerate() {
            if let Some(info) = reply::info(info) {
                self.check_gap(i, info, now);
            }
        }
        let mut round = Round::default();
        for (name, entries) in reply::xread(read) {
            let Some(i) = self.streams.iter().position(|s| s.as_bytes() == name) else {
                continue;
            };
            self.apply_entries(i, entries);
            round.entries += entries.len();
            round.full |= entries.len() >= COUNT;
        }
        Ok(round)
    }

    /// Anything deleted after our position was never applied: a gap. Trimming
    /// removes the oldest entries, so the stream starting after our position
    /// (or being empty though IDs past it were generated) means some may be
    /// gone; XDEL shows in max-deleted-entry-id. Conservative at one edge:
    /// trimmed exactly through our position reads as a gap, which costs a
    /// revalidation spread over max_age, never a missed change.
    fn check_gap(&mut self, i: usize, info: Info, now: u64) {
        let last = self.last[i];
        let recreated = info.last_generated < last;
        let lost = recreated || is_gap(last, &info);
        if recreated {
            // A new stream under the old name: its IDs restart below ours.
            self.last[i] = StreamId::ZERO;
        }
        if lost {
            self.gap(i, last, info, now);
        }
        self.known[i] = true;
    }

    fn gap(&mut self, i: usize, last: StreamId, info: Info, now: u64) {
        self.whole_since[i] = now;
        if !self.known[i] {
            return; // a first read from 0-0: nothing applied could be stale
        }
        self.stats.gap();
        let first = info.first_entry.map(|f| f.to_string());
        tracing::warn!(stream = %self.streams[i], last_applied = %last, first_entry = ?first,
            "stream trimmed past the last applied entry: entries were lost; every key revalidates over max_age");
        let max_age = self.state.tunables.max_age_ms();
        let mut rng = fastrand::Rng::new();
        let now = self.state.table.now_ms();
        self.state
            .table
            .cap_confirmations(|| crate::snapshot::spread(now, max_age, &mut rng));
    }

    fn apply_entries(&mut self, i: usize, entries: &[Value]) {
        for v in entries {
            let Some(e) = reply::entry(v) else {
                let why = "entry is not [id, [field, value, ...]]";
                self.stats.bad(Source::Stream, &self.streams[i], "?", &why);
                continue;
            };
            match apply_entry(&self.state, &e) {
                Ok(_) => self.stats.count_applied(Source::Stream, 1),
                Err(why) => {
                    let id = e.id.to_string();
                    self.stats.bad(Source::Stream, &self.streams[i], &id, &why)
                }
            }
            self.last[i] = e.id;
            self.stats.entry_applied(e.id.ms);
        }
        let last = self.last[i];
        self.positions.set(&self.streams[i], (last.ms, last.seq));
    }
}

/// Whether entries after `last` may have been deleted before we read them.
fn is_gap(last: StreamId, info: &Info) -> bool {
    if last == StreamId::ZERO {
        // Reading from the start: lost only if anything was ever deleted.
        return info.entries_added.is_none_or(|added| added > info.length);
    }
    info.max_deleted.is_some_and(|m| m > last)
        || match info.first_entry {
            Some(first) => first > last,
            None => info.last_generated > last,
        }
}

/// `key` + `version`, or `body` (a whole publish batch); anything else is bad.
pub fn apply_entry(state: &State, e: &Entry<'_>) -> Result<usize, Error> {
    match (e.field(b"key"), e.field(b"version"), e.field(b"body")) {
        (Some(key), Some(version), None) => {
            let key =
                std::str::from_utf8(key).map_err(|_| Error::BadRequest("key is not UTF-8"))?;
            check_key(key).map_err(Error::BadRequest)?;
            let version = std::str::from_utf8(version)
                .map_err(|_| Error::BadRequest("version is not UTF-8"))
                .and_then(|v| parse_version(v).map_err(Error::BadRequest))?;
            state.learn(key, version, VersionSource::Redis);
            Ok(1)
        }
        (None, None, Some(body)) => super::apply_body(state, body),
        _ => Err(Error::BadRequest(
            "an entry needs the fields `key` and `version`, or only `body`",
        )),
    }
}

fn malformed(what: &str) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "unexpected stream reply",
        what.to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ms: u64) -> StreamId {
        StreamId { ms, seq: 0 }
    }

    fn info(first: Option<u64>, last: u64, length: u64, added: u64) -> Info {
        Info {
            last_generated: id(last),
            max_deleted: Some(StreamId::ZERO),
            first_entry: first.map(id),
            length,
            entries_added: Some(added),
        }
    }

    #[test]
    fn a_gap_is_anything_after_our_position_gone() {
        // Caught up at 10; the stream was trimmed behind us: no gap.
        assert!(!is_gap(id(10), &info(Some(5), 12, 8, 20)));
        // Trimmed past our position: entries 11..first may be gone.
        assert!(is_gap(id(10), &info(Some(15), 20, 5, 30)));
        // Emptied though IDs after ours were generated.
        assert!(is_gap(id(10), &info(None, 12, 0, 12)));
        assert!(!is_gap(id(12), &info(None, 12, 0, 12)));
        // XDEL after our position.
        let mut i = info(Some(5), 20, 10, 11);
        i.max_deleted = Some(id(11));
        assert!(is_gap(id(10), &i));
        // From the start: only a stream that ever lost an entry.
        assert!(!is_gap(StreamId::ZERO, &info(Some(1), 9, 9, 9)));
        assert!(is_gap(StreamId::ZERO, &info(Some(3), 9, 7, 9)));
    }
}
