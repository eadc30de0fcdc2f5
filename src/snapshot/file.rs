//! The snapshot on disk: crash-safe replacement (temp file, fsync, rename,
//! directory fsync), read-only mapping for loading, and moving a bad file aside.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;

pub const FILE_NAME: &str = "pollgate.snap";
const TEMP_NAME: &str = "pollgate.snap.tmp";
const LOCK_NAME: &str = "pollgate.lock";

/// Takes an exclusive advisory lock on `<dir>/pollgate.lock`, held as long as
/// the returned file lives. Two pollgates on one `data_dir` would overwrite
/// each other's snapshots, and the mapping's soundness assumes nobody else
/// writes there (see [`map`]).
pub fn lock_dir(dir: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK_NAME))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(fs::TryLockError::WouldBlock) => Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!("{LOCK_NAME} is held by another process (another pollgate on this data_dir?)"),
        )),
        Err(fs::TryLockError::Error(e)) => Err(e),
    }
}

pub fn snapshot_path(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// Replaces `<dir>/pollgate.snap` with `parts` so that a crash at any point
/// leaves either the old file or the new one, whole. Returns bytes written.
pub fn write_atomically(dir: &Path, parts: &[&[u8]]) -> io::Result<u64> {
    let tmp = dir.join(TEMP_NAME);
    let res = write_synced(&tmp, parts).and_then(|n| {
        fs::rename(&tmp, snapshot_path(dir))?;
        // The rename is only durable once the directory entry is.
        File::open(dir)?.sync_all()?;
        Ok(n)
    });
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

fn write_synced(path: &Path, parts: &[&[u8]]) -> io::Result<u64> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    let mut n = 0u64;
    for p in parts {
        f.write_all(p)?;
        n += p.len() as u64;
    }
    f.sync_all()?;
    Ok(n)
}

/// The snapshot file mapped read-only; `None` when there is none.
pub fn map(path: &Path) -> io::Result<Option<Mmap>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    // SAFETY: a mapping is only sound while nobody modifies the file. pollgate
    // never writes a snapshot in place: a new one is written to a temp file
    // and renamed over this name, which leaves the inode we mapped untouched.
    // `data_dir` belongs to one pollgate (`lock_dir`, held for the process's
    // life); an outside process truncating this file while it is mapped is
    // outside that contract. The bytes are then only read through bounds-checked slices.
    let map = unsafe { Mmap::map(&file)? };
    Ok(Some(map))
}

/// Renames a file that failed validation to `<name>.corrupt-<unix secs>`, so
/// it is kept for inspection but never loaded again. Returns the new path.
pub fn move_aside(path: &Path, unix_secs: u64) -> io::Result<PathBuf> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".corrupt-{unix_secs}"));
    let to = path.with_file_name(name);
    fs::rename(path, &to)?;
    Ok(to)
}

/// Deletes all but the `keep` newest `<name>.corrupt-<secs>` beside `path`.
/// Best effort: a file that cannot be listed or removed is left alone.
pub fn prune_corrupt(path: &Path, keep: usize) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let prefix = format!("{}.corrupt-", name.to_string_lossy());
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut found: Vec<(u64, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            let secs = n.strip_prefix(&prefix)?.parse().ok()?;
            Some((secs, e.path()))
        })
        .collect();
    found.sort_unstable_by_key(|f| std::cmp::Reverse(f.0));
    for (_, old) in found.into_iter().skip(keep) {
        let _ = fs::remove_file(old);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_replaces_and_map_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        assert!(map(&snapshot_path(dir.path())).unwrap().is_none());
        assert_eq!(write_atomically(dir.path(), &[b"old"]).unwrap(), 3);
        assert_eq!(write_atomically(dir.path(), &[b"ne", b"w!"]).unwrap(), 4);
        let m = map(&snapshot_path(dir.path())).unwrap().unwrap();
        assert_eq!(&m[..], b"new!");
        assert!(!dir.path().join(TEMP_NAME).exists());
    }

    #[test]
    fn empty_file_maps_to_nothing_readable() {
        let dir = tempfile::tempdir().unwrap();
        let p = snapshot_path(dir.path());
        File::create(&p).unwrap();
        assert_eq!(map(&p).unwrap().unwrap().len(), 0);
    }

    #[test]
    fn move_aside_keeps_the_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = snapshot_path(dir.path());
        fs::write(&p, b"junk").unwrap();
        let to = move_aside(&p, 1234).unwrap();
        assert_eq!(to, dir.path().join("pollgate.snap.corrupt-1234"));
        assert!(!p.exists());
        assert_eq!(fs::read(to).unwrap(), b"junk");
    }

    #[test]
    fn a_data_dir_is_locked_by_one_holder_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock_dir(dir.path()).unwrap();
        let err = lock_dir(dir.path()).unwrap_err();
        assert!(err.to_string().contains("another pollgate"), "{err}");
        drop(held);
        lock_dir(dir.path()).unwrap();
    }

    #[test]
    fn write_into_missing_dir_fails_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("nope");
        assert!(write_atomically(&gone, &[b"x"]).is_err());
    }
}
