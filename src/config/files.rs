//! Secrets read from files (`publish_token_file`, …): the systemd credential
//! or Kubernetes Secret volume a secret is delivered in. Read at load, so a
//! reload (and the periodic check in `reload`) reads them again.
//!
//! A file holds one value per non-empty line (trailing CR trimmed), each
//! parsed exactly as the key's own value. Empty, unreadable or
//! world-writable files are errors; a world-readable one is a warning (see
//! [`permissions`] for why).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::keys::{key_index, KEYS};
use super::Config;

/// A secret key and the key naming the file it may come from instead.
pub(super) struct SecretFile {
    pub key: &'static str,
    pub file_key: &'static str,
    path: fn(&Config) -> Option<&PathBuf>,
}

pub(super) const SECRET_FILES: [SecretFile; 5] = [
    SecretFile {
        key: "publish_token",
        file_key: "publish_token_file",
        path: |c| c.publish_token_file.as_ref(),
    },
    SecretFile {
        key: "admin_token",
        file_key: "admin_token_file",
        path: |c| c.admin_token_file.as_ref(),
    },
    SecretFile {
        key: "auth_jwt_secret",
        file_key: "auth_jwt_secret_file",
        path: |c| c.auth_jwt_secret_file.as_ref(),
    },
    SecretFile {
        key: "cluster_key",
        file_key: "cluster_key_file",
        path: |c| c.cluster_key_file.as_ref(),
    },
    SecretFile {
        key: "redis_url",
        file_key: "redis_url_file",
        path: |c| c.redis_url_file.as_ref(),
    },
];

/// What reading the files found: errors refuse the config, warnings do not.
#[derive(Debug, Default)]
pub struct FileFindings {
    pub errs: Vec<String>,
    pub warnings: Vec<String>,
}

/// Whether `cfg` takes any secret from a file.
pub fn has_secret_files(cfg: &Config) -> bool {
    SECRET_FILES.iter().any(|f| (f.path)(cfg).is_some())
}

/// Reads every secret file `cfg` names into the key it stands for.
pub fn read_secret_files(cfg: &mut Config) -> FileFindings {
    let mut found = FileFindings::default();
    for f in &SECRET_FILES {
        if let Some(path) = (f.path)(cfg).cloned() {
            if let Err(e) = read_into(cfg, f, &path, &mut found.warnings) {
                found.errs.push(format!("{}: {e}", f.file_key));
            }
        }
    }
    found
}

fn read_into(
    cfg: &mut Config,
    f: &SecretFile,
    path: &Path,
    warnings: &mut Vec<String>,
) -> Result<(), String> {
    let shown = path.display();
    if let Some(w) = permissions(path)? {
        warnings.push(format!("{}: {shown} {w}", f.file_key));
    }
    let text = read_small(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let lines = secret_lines(&text);
    let key = &KEYS[key_index(f.key).expect("a secret file stands for a key")];
    match lines.len() {
        0 => return Err(format!("{shown} is empty: it must hold the {}", f.key)),
        n if n > 1 && !key.list => {
            return Err(format!(
                "{shown} holds {n} lines: {} takes one value",
                f.key
            ))
        }
        _ => {}
    }
    // The value is a secret: an error names its line, never its text.
    (key.set)(cfg, &lines).map_err(|bad| {
        let at = lines.iter().position(|l| *l == bad.value).unwrap_or(0) + 1;
        format!("line {at} of {shown}: {}", bad.why)
    })
}

/// Largest secret file read: a few keys or URLs fit many times over, and a
/// path mistaken for a secret (a log, a disk image) is refused, not loaded.
const MAX_SECRET_FILE: u64 = 64 << 10;

fn read_small(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    let file = std::fs::File::open(path)?;
    file.take(MAX_SECRET_FILE + 1).read_to_string(&mut text)?;
    match text.len() as u64 > MAX_SECRET_FILE {
        true => Err(std::io::Error::other(
            "larger than 64KiB: not a secret file",
        )),
        false => Ok(text),
    }
}

/// One value per non-empty line; a line's trailing CR (a file written on
/// Windows) is not part of it.
fn secret_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// A file anyone may write is an error: whoever writes it chooses the token
/// pollgate accepts (or the key gossip trusts). A file anyone may read is a
/// warning, not an error: Kubernetes mounts a Secret `0644` and Docker a
/// secret `0444` by default, where the mount's own directories keep other
/// users out, so refusing them would refuse the two most common ways a
/// secret file arrives, and push operators back to environment variables.
/// Checked before reading: only a regular file is read (a FIFO would block
/// the periodic check for good).
fn permissions(path: &Path) -> Result<Option<String>, String> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    let mode = meta.permissions().mode();
    if mode & 0o002 != 0 {
        return Err(format!(
            "{} is writable by every user (mode {:04o}): anyone could choose the secret; chmod o-w it",
            path.display(),
            mode & 0o7777
        ));
    }
    Ok((mode & 0o004 != 0).then(|| {
        format!(
            "is readable by every user (mode {:04o}); chmod o-r it (Kubernetes: defaultMode: 0440 on the Secret volume)",
            mode & 0o7777
        )
    }))
}
