//! The README's configuration table against the real binary: every key
//! `pollgate --print-config` knows has one row, no row names a key that does
//! not exist, and a default written as one literal value is the default the
//! binary really has. A key added without its README row fails here.

use std::collections::BTreeMap;
use std::process::Command;

/// Key → printed default (`None` for a key printed as unset), in print order.
fn printed_defaults() -> BTreeMap<String, Option<String>> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pollgate"));
    for (name, _) in std::env::vars().filter(|(k, _)| k.starts_with("POLLGATE_")) {
        cmd.env_remove(name);
    }
    let out = cmd.arg("--print-config").output().expect("run pollgate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut keys = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            if let Some(key) = rest.strip_suffix(" is unset") {
                keys.insert(key.to_string(), None);
            }
        } else if let Some((key, value)) = line.split_once(" = ") {
            keys.insert(key.to_string(), Some(plain(value)));
        }
    }
    assert!(
        keys.len() > 40,
        "parsed only {} keys from:\n{text}",
        keys.len()
    );
    keys
}

/// A TOML value as the README writes it: no quotes, a one-element list as
/// its element, an empty list as "".
fn plain(value: &str) -> String {
    let v = value.trim();
    let v = v
        .strip_prefix('[')
        .and_then(|v| v.strip_suffix(']'))
        .unwrap_or(v);
    v.trim_matches('"').to_string()
}

/// Key → default cell, from the rows of the README's "Configuration" table.
fn readme_rows() -> BTreeMap<String, String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("\n## Configuration\n")
        .nth(1)
        .expect("README has a Configuration section");
    let section = section.split("\n## ").next().unwrap();
    let mut rows = BTreeMap::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split(" | ").collect();
        let key = cells[0]
            .trim_start_matches("| `")
            .split('`')
            .next()
            .unwrap();
        let previous = rows.insert(key.to_string(), cells[1].trim().to_string());
        assert!(previous.is_none(), "README lists `{key}` twice");
    }
    rows
}

#[test]
fn every_key_has_one_readme_row_and_no_row_is_stale() {
    let printed = printed_defaults();
    let rows = readme_rows();
    let missing: Vec<_> = printed.keys().filter(|k| !rows.contains_key(*k)).collect();
    let stale: Vec<_> = rows.keys().filter(|k| !printed.contains_key(*k)).collect();
    assert!(missing.is_empty(), "keys with no README row: {missing:?}");
    assert!(
        stale.is_empty(),
        "README rows for keys pollgate does not know: {stale:?}"
    );
}

#[test]
fn a_literal_readme_default_is_the_real_default() {
    let printed = printed_defaults();
    let mut checked = 0;
    for (key, cell) in readme_rows() {
        // Only cells that are exactly one code span are literal values;
        // "unset (…)", "none", "hostname + port" describe instead.
        let Some(literal) = cell.strip_prefix('`').and_then(|c| c.strip_suffix('`')) else {
            continue;
        };
        if literal.contains('`') {
            continue;
        }
        let Some(Some(real)) = printed.get(&key) else {
            panic!("README gives `{key}` the default `{literal}`, pollgate prints it unset");
        };
        assert_eq!(literal, real, "README default of `{key}`");
        checked += 1;
    }
    assert!(checked > 30, "only {checked} literal defaults compared");
}
