//! External tools a test needs (systemd-analyze, promtool, node): found on
//! PATH, or the test is skipped with a note — except under `CI=true`, where
//! `.ci/run` installs them, so a missing one is a failure, never a silent skip.

use std::path::PathBuf;

/// The tool's path; `None` (skip) only outside CI. `package` is what
/// `.ci/run` installs it from, named in the message.
pub fn require(tool: &str, package: &str) -> Option<PathBuf> {
    if let Some(path) = on_path(tool) {
        return Some(path);
    }
    let msg = format!("{tool} not found (Debian/npm package {package}; .ci/run installs it)");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true and {msg}");
    }
    eprintln!("SKIPPED: {msg}");
    None
}

fn on_path(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}
