//! Process-wide allocator settings, applied once at start-up by `main`.
//! glibc only; elsewhere a no-op.

/// Allocations at least this large get their own mapping, returned to the
/// OS when freed. glibc starts at 128 KiB but raises the threshold to the size
/// of each mapped block freed (up to 32 MiB), so after the first 1 MiB
/// publish body, later bodies and batch scratch come from the heap and stay
/// resident. And a table shard's index outgrowing 16k buckets frees its
/// 82 KB array, a heap hole that later, smaller allocations refill only
/// in part: 64 shards leave up to ~5 MB. `make loadtest-mem` at 1M keys, three runs each:
/// 48–54 B/key as glibc has it, 49–50 at a fixed 128 KiB, 45–47 at 64 KiB.
/// The cost is an mmap/munmap pair per buffer of 64 KiB or more, only on
/// bulk paths (publish, snapshot, catch-up, index growth); the hit path
/// allocates nothing this large.
pub const MMAP_THRESHOLD: usize = 64 * 1024;

/// Fixes glibc's mmap threshold at [`MMAP_THRESHOLD`] (see there for why).
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes malloc's parameters; called before any
    // other thread exists, as glibc recommends.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
    }
}
