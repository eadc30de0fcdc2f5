//! The sharded version table: key → (max version ever learned, when a trusted
//! source last confirmed it). Merge is `max`, so a version never goes backwards.

/// What a lookup sees of one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub version: u64,
    /// Milliseconds on the table clock ([`Table::now_ms`]) of the last confirmation.
    pub confirmed_ms: u64,
}

/// What a merge did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    /// The key was new.
    Inserted,
    /// The version moved up from `from`.
    Advanced { from: u64 },
    /// The version was already at least this high.
    Unchanged,
}

impl Merge {
    /// Whether watchers, peers and snapshots must hear about it.
    pub fn advanced(self) -> bool {
        !matches!(self, Merge::Unchanged)
    }
}

/// Called after every merge that inserted or advanced a key, outside any shard lock.
pub type AdvanceHook = Box<dyn Fn(&str, u64) + Send + Sync>;

pub struct Table {}

impl Table {
    pub fn new() -> Self {
        todo!()
    }
    /// Monotonic milliseconds; starts well above zero so `now - max_age` never underflows.
    pub fn now_ms(&self) -> u64 {
        todo!()
    }
    pub fn get(&self, _key: &str) -> Option<Entry> {
        todo!()
    }
    /// Max-merge `version` into `key`. With `confirm`, a version ≥ the stored
    /// one also refreshes `confirmed_ms` to now.
    pub fn merge(&self, _key: &str, _version: u64, _confirm: bool) -> Merge {
        todo!()
    }
    /// Max-merge with an explicit confirmation time (snapshot load spreads these).
    pub fn merge_at(&self, _key: &str, _version: u64, _confirmed_ms: u64) -> Merge {
        todo!()
    }
    pub fn len(&self) -> usize {
        todo!()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Registers a hook run after every advancing merge. Set up at start-up.
    pub fn on_advance(&self, _hook: AdvanceHook) {
        todo!()
    }
    /// Visits every entry, one shard read-lock at a time (never a global lock).
    pub fn for_each(&self, _f: impl FnMut(&str, Entry)) {
        todo!()
    }
}

impl Default for Table {
    fn default() -> Self {
        Self::new()
    }
}
