//! The command line and `--help`, built from the key table with clap's
//! builder API rather than a derive struct: a derive would repeat every key
//! (and its help) a second time.

use std::ffi::OsString;
use std::sync::OnceLock;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Arg, ArgAction, ArgMatches, ColorChoice, Command};

use super::keys::{default_texts, Key, KEYS};
use super::LoadError;

/// `--foo-bar` for key `foo_bar`; clap wants `&'static str` names.
pub(super) fn flag_names() -> &'static [String] {
    static NAMES: OnceLock<Vec<String>> = OnceLock::new();
    NAMES.get_or_init(|| KEYS.iter().map(|k| k.name.replace('_', "-")).collect())
}

/// The flags, and one line per argument clap refused. An unknown argument
/// is dropped and the rest parsed again, so it is reported together with
/// every bad value rather than hiding them; any other refusal (a flag
/// without its value) leaves no flags at all, still with env and file read.
pub(super) fn parse_args(
    args: impl IntoIterator<Item = OsString>,
) -> Result<(ArgMatches, Vec<String>), LoadError> {
    let mut args: Vec<OsString> = args.into_iter().collect();
    let mut errs = Vec::new();
    loop {
        let e = match command().try_get_matches_from(&args) {
            Ok(m) => return Ok((m, errs)),
            Err(e) => e,
        };
        if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
            return Err(LoadError::Display(e.to_string()));
        }
        errs.push(clap_message(&e));
        if !drop_unknown(&mut args, &e) {
            let none = command().try_get_matches_from(&args[..1.min(args.len())]);
            return Ok((none.expect("no arguments always parse"), errs));
        }
    }
}

/// Removes the argument `e` refused as unknown, and the value that follows
/// an unknown `--flag` (pollgate takes no positional arguments, so a bare
/// word after it can only be meant as its value). False if there is none.
fn drop_unknown(args: &mut Vec<OsString>, e: &clap::Error) -> bool {
    let unknown = match (e.kind(), e.get(ContextKind::InvalidArg)) {
        (ErrorKind::UnknownArgument, Some(ContextValue::String(arg))) => arg,
        _ => return false,
    };
    let is_it = |a: &OsString| {
        let a = a.to_string_lossy();
        a == unknown.as_str() || a.starts_with(&format!("{unknown}="))
    };
    let Some(at) = args.iter().skip(1).position(is_it).map(|i| i + 1) else {
        return false;
    };
    let gone = args.remove(at).to_string_lossy().into_owned();
    let takes_value = gone.starts_with("--") && !gone.contains('=');
    if takes_value
        && args
            .get(at)
            .is_some_and(|v| !v.to_string_lossy().starts_with('-'))
    {
        args.remove(at);
    }
    true
}

/// clap's message and tip on one line, without its `error: ` prefix and usage.
fn clap_message(e: &clap::Error) -> String {
    let text = e.to_string();
    let lines = text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:"));
    let kept: Vec<&str> = lines.filter(|l| !l.is_empty()).collect();
    format!(
        "{} (see --help)",
        kept.join("; ").trim_start_matches("error: ")
    )
}

pub(super) fn command() -> Command {
    let keys = KEYS
        .iter()
        .zip(flag_names())
        .zip(default_texts())
        .map(|((k, flag), default)| key_arg(k, flag, default));
    Command::new("pollgate")
        .version(concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("PG_GIT_COMMIT"), ")"))
        .about("Answers \"anything new since version V?\" polls from memory; forwards only the stale ones")
        .color(ColorChoice::Never)
        .after_help(AFTER_HELP)
        .next_help_heading("Configuration")
        .arg(Arg::new("config").long("config").value_name("FILE").help(CONFIG_HELP))
        .arg(Arg::new("print_config").long("print-config").action(ArgAction::SetTrue).help(PRINT_HELP))
        .args(keys)
}

/// Every flag takes plain strings: clap never rejects a value, we parse it
/// (so every bad value is reported at once, in our words).
fn key_arg(key: &'static Key, flag: &'static str, default: &str) -> Arg {
    let action = if key.list {
        ArgAction::Append
    } else {
        ArgAction::Set
    };
    let env = match key.list {
        true => format!("{}, comma-separated; repeatable", key.env_name()),
        false => key.env_name(),
    };
    // A bare boolean flag means true (`--insecure-cluster`), as the issue spells it.
    let bare = match key.value_name {
        "BOOL" => Some("true"),
        _ => None,
    };
    Arg::new(key.name)
        .long(flag)
        .value_name(key.value_name)
        .action(action)
        .num_args(if bare.is_some() { 0..=1 } else { 1..=1 })
        .default_missing_value(bare)
        .help_heading(key.heading)
        .help(format!("{} [default: {}] [env: {env}]", key.help, default))
}

const CONFIG_HELP: &str = "TOML file with the same keys as the flags, written with _ (max_age = \"30s\") [env: POLLGATE_CONFIG]";
const PRINT_HELP: &str = "Print the effective config as TOML and exit (secrets shown as \"<set>\")";
const AFTER_HELP: &str = "\
Precedence, highest first: flags, then environment variables POLLGATE_<KEY>
(POLLGATE_MAX_AGE=30s), then the --config FILE (max_age = \"30s\"), then the
built-in defaults. A higher layer replaces a repeatable key's whole list. In the
environment lists are comma-separated (POLLGATE_UPSTREAM=http://a:3000,http://b:3000),
so a route containing a comma must come from a flag or the file.

Durations: 250ms, 60s, 5m, 1h, 1h 30m (0s disables max_age).
Sizes: 512 (bytes), 1KB (1000), 16KiB (16384), 1MiB; units B, KB, KiB, MB, MiB,
GB, GiB in any case. Booleans: true/false, yes/no, on/off, 1/0.

--print-config never prints secrets (tokens, cluster_key): it shows \"<set>\",
which is refused when loaded again, so put the real values back before reuse.
A secret from a *_file key (--publish-token-file) is printed as that path.";
