//! The serving side of pull anti-entropy: a page of every shard whose
//! change count moved past the requester's (the protocol is in PROTOCOL.md).

use bytes::Bytes;

use super::codec::PullWriter;
use super::current_config;
use crate::table::Table;
use crate::tunables::Tunables;

/// A page stops after the shard that crosses this many bytes of items:
/// big enough that a 1M-key catch-up is a handful of round trips, small
/// enough to be merged without stalling a runtime worker for long.
const PAGE_BYTES: usize = 4 << 20;

/// Answers a pull: every shard whose count moved past the requester's
/// (all of them when the epoch differs), until the page budget is spent.
pub fn serve(table: &Table, tunables: &Tunables, epoch: u64, seqs: &[u64]) -> Bytes {
    let same = epoch == table.epoch();
    let mut w = PullWriter::new(&current_config(tunables), table.epoch());
    let now = table.now_ms();
    let mut more = false;
    for s in 0..table.shard_count() {
        if w.len() >= PAGE_BYTES {
            more = true;
            break;
        }
        let since = match same {
            true => seqs.get(s).copied().unwrap_or(0),
            false => 0,
        };
        let upto = table.changed_since(s, since, |k, e| {
            let ago = (e.confirmed_ms > 0).then(|| now.saturating_sub(e.confirmed_ms));
            w.item_parts(k, e.version, ago);
        });
        if upto != since {
            w.cover(s as u32, upto);
        }
    }
    let current: Vec<u64> = (0..table.shard_count())
        .map(|s| table.shard_seq(s))
        .collect();
    w.finish(&current, more)
}
