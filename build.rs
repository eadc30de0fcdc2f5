//! Embeds the git commit in the binary (`pollgate --version`,
//! `pollgate_build_info`): `PG_GIT_COMMIT`, or "unknown" when the source
//! is not a git checkout (a tarball, a vendored crate) or git is missing.
//! Not `POLLGATE_*`: cargo also sets this variable when it runs the tests'
//! pollgate processes, which refuse unknown `POLLGATE_*` variables.

use std::process::Command;

fn main() {
    if !own_checkout() {
        println!("cargo:rustc-env=PG_GIT_COMMIT=unknown");
        return;
    }
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=PG_GIT_COMMIT={commit}");
    // Rebuild when HEAD moves: HEAD itself (branch switch) and the branch it
    // names (a commit). Paths come from git, so worktrees work too.
    for path in ["HEAD", "packed-refs"] {
        watch(git(&["rev-parse", "--git-path", path]));
    }
    let branch = git(&["symbolic-ref", "-q", "HEAD"]);
    watch(branch.and_then(|r| git(&["rev-parse", "--git-path", &r])));
}

/// The crate is the top of a git work tree, not vendored inside another
/// project's repository (whose commit would be the wrong one).
fn own_checkout() -> bool {
    let top = git(&["rev-parse", "--show-toplevel"]).map(std::path::PathBuf::from);
    let here = std::env::var_os("CARGO_MANIFEST_DIR").map(std::path::PathBuf::from);
    match (top, here) {
        (Some(top), Some(here)) => top.canonicalize().ok() == here.canonicalize().ok(),
        _ => false,
    }
}

/// Only files that exist: cargo reruns a build script on every build while a
/// watched path is missing (a branch whose ref is only in packed-refs).
fn watch(path: Option<String>) {
    if let Some(p) = path.filter(|p| std::path::Path::new(p).exists()) {
        println!("cargo:rerun-if-changed={p}");
    }
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
}
