//! The layers, lowest first: built-in default < `--config` file < env
//! (`POLLGATE_*`) < flags. Each layer writes the raw text of the keys it
//! sets, replacing lower layers; only the winning text is parsed (`build`).

use clap::ArgMatches;
use toml::Value;

use super::cli::flag_names;
use super::files::{read_secret_files, FileFindings, SECRET_FILES};
use super::keys::{key_index, Key, CONFIG_ENV, ENV_PREFIX, KEYS};
use super::parse::unknown;
use super::{default_node_id, Config};

/// The winning raw text of one key and where it came from (for errors).
#[derive(Debug, Clone)]
struct Raw {
    values: Vec<String>,
    from: String,
}

/// The config the layers give (secret files read), with every bad name and
/// value in `errs`, and the keys an environment variable or a flag set
/// (they beat the file).
pub(super) fn layered(
    m: &ArgMatches,
    env: &[(String, String)],
    found: &mut FileFindings,
) -> (Config, Vec<&'static str>) {
    let errs = &mut found.errs;
    let mut raws: Vec<Option<Raw>> = vec![None; KEYS.len()];
    if let Some((path, from)) = config_path(m, env) {
        read_file(&path, &from, &mut raws, errs);
    }
    read_env(env, &mut raws, errs);
    read_flags(m, &mut raws);
    let pinned = KEYS
        .iter()
        .zip(&raws)
        .filter(|(_, r)| r.as_ref().is_some_and(|r| !r.from.starts_with("file ")))
        .map(|(k, _)| k.name)
        .collect();
    let mut config = build(&raws, errs);
    errs.extend(both_given(&raws));
    let files = read_secret_files(&mut config);
    found.errs.extend(files.errs);
    found.warnings.extend(files.warnings);
    (config, pinned)
}

/// A secret and its `_file` key both set, in any layers: an error, not a
/// precedence rule, since either way one of them would be silently unused
/// (an old `POLLGATE_PUBLISH_TOKEN` left beside a new credential file).
fn both_given(raws: &[Option<Raw>]) -> Vec<String> {
    let from = |name: &str| key_index(name).and_then(|i| raws[i].as_ref().map(|r| &r.from));
    SECRET_FILES
        .iter()
        .filter_map(|f| {
            let (key, file) = (from(f.key)?, from(f.file_key)?);
            Some(format!(
                "{} (from {key}) and {} (from {file}) are both given: give one",
                f.key, f.file_key
            ))
        })
        .collect()
}

/// Parses each key's winning text into a config, starting from the default.
fn build(raws: &[Option<Raw>], errs: &mut Vec<String>) -> Config {
    let mut config = Config::default();
    for (key, raw) in KEYS.iter().zip(raws) {
        let Some(raw) = raw else { continue };
        if let Err(bad) = (key.set)(&mut config, &raw.values) {
            let value = shown(key.name, &bad.value);
            errs.push(format!(
                "{}: {value} (from {}) {}",
                key.name, raw.from, bad.why
            ));
        }
    }
    // After layering, so the default name follows the port actually used.
    if key_index("node_id").is_some_and(|i| raws[i].is_none()) {
        config.node_id = default_node_id(config.internal_listen.port());
    }
    config
}

/// A refused value as an error quotes it, unless it is a secret: errors end
/// up in logs and a malformed secret is usually a real one with a typo.
fn shown(key: &str, value: &str) -> String {
    if SECRET_FILES.iter().any(|f| f.key == key) {
        "<secret not shown>".into()
    } else {
        format!("{value:?}")
    }
}

/// `--config` beats `POLLGATE_CONFIG`; returns the path and its source.
fn config_path(m: &ArgMatches, env: &[(String, String)]) -> Option<(String, String)> {
    if let Some(path) = m.get_one::<String>("config") {
        return Some((path.clone(), "--config".into()));
    }
    let (_, path) = env.iter().find(|(k, v)| k == CONFIG_ENV && !v.is_empty())?;
    Some((path.clone(), CONFIG_ENV.into()))
}

fn read_file(path: &str, from: &str, raws: &mut [Option<Raw>], errs: &mut Vec<String>) {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            return errs.push(format!(
                "config file {path:?} (from {from}): cannot read: {e}"
            ))
        }
    };
    let table = match text.parse::<toml::Table>() {
        Ok(table) => table,
        Err(e) => return errs.push(format!("config file {path:?}: {}", toml_error(&text, &e))),
    };
    for (name, value) in table {
        match file_entry(&name, value) {
            Ok((i, values)) => {
                raws[i] = Some(Raw {
                    values,
                    from: format!("file {path}"),
                })
            }
            Err(e) => errs.push(format!("config file {path:?}: {e}")),
        }
    }
}

/// One line: where in the file and what the parser expected.
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let at = e.span().map_or(0, |s| s.start).min(text.len());
    let line = text[..at].matches('\n').count() + 1;
    let column = at - text[..at].rfind('\n').map_or(0, |n| n + 1) + 1;
    format!(
        "invalid TOML at line {line}, column {column}: {}",
        e.message().trim()
    )
}

/// A file key's index and its values as text (arrays only for list keys).
fn file_entry(name: &str, value: Value) -> Result<(usize, Vec<String>), String> {
    let i = key_index(name).ok_or_else(|| unknown("key", name, name, ""))?;
    let values = match value {
        Value::Array(items) if KEYS[i].list => items.into_iter().map(scalar_text).collect(),
        Value::Array(_) => Err("takes a single value, not an array".into()),
        value => scalar_text(value).map(|s| vec![s]),
    };
    values
        .map(|v| (i, v))
        .map_err(|why| format!("{name}: {why}"))
}

fn scalar_text(value: Value) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s),
        Value::Integer(n) => Ok(n.to_string()),
        Value::Float(n) => Ok(n.to_string()),
        Value::Boolean(b) => Ok(b.to_string()),
        other => Err(format!("{other} is not a string, number or boolean")),
    }
}

fn read_env(env: &[(String, String)], raws: &mut [Option<Raw>], errs: &mut Vec<String>) {
    for (name, value) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if name == CONFIG_ENV {
            continue;
        }
        let lower = rest.to_ascii_lowercase();
        match key_index(&lower).filter(|_| rest == lower.to_ascii_uppercase()) {
            Some(i) => {
                raws[i] = Some(Raw {
                    values: env_values(&KEYS[i], value),
                    from: name.clone(),
                })
            }
            None => errs.push(unknown("environment variable", name, &lower, ENV_PREFIX)),
        }
    }
}

/// Lists are comma-separated in env (so a route with a comma needs a flag or
/// the file); blanks are dropped, so an empty variable means an empty list.
fn env_values(key: &Key, value: &str) -> Vec<String> {
    match key.list {
        true => value
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        false => vec![value.to_string()],
    }
}

fn read_flags(m: &ArgMatches, raws: &mut [Option<Raw>]) {
    for (i, key) in KEYS.iter().enumerate() {
        if let Some(values) = m.get_many::<String>(key.name) {
            let from = format!("--{}", flag_names()[i]);
            raws[i] = Some(Raw {
                values: values.cloned().collect(),
                from,
            });
        }
    }
}
