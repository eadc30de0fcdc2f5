//! Value parsers: each reads one key's text (`Err` says what was expected;
//! the caller adds key and source), and the printers `--print-config` uses,
//! each writing what its parser reads back. Also "did you mean".

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use toml::Value;

use super::keys::KEYS;
use super::{LogFormat, REDACTED};

const DURATION: &str = "is not a duration like 250ms, 60s, 1h";
const SIZE: &str = "is not a size like 512, 16KiB, 1MiB, 1KB";

pub(super) fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|_| DURATION.into())
}

pub(super) fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = duration(s)?;
    match d.is_zero() {
        true => Err("must be longer than 0s".into()),
        false => Ok(d),
    }
}

/// `512`, `1KB` (1000), `16KiB` (16384), … up to GiB, any case.
fn size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let unit = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "kib" => 1 << 10,
        "mb" => 1_000_000,
        "mib" => 1 << 20,
        "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => return Err(SIZE.into()),
    };
    let n: u64 = digits.parse().map_err(|_| SIZE.to_string())?;
    n.checked_mul(unit).ok_or_else(|| "is too large".into())
}

/// Largest exact binary unit, so printing and parsing round-trip.
fn size_text(n: u64) -> String {
    let units = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    match units.iter().find(|(u, _)| n != 0 && n.is_multiple_of(*u)) {
        Some((u, name)) => format!("{}{name}", n / u),
        None => format!("{n}B"),
    }
}

pub(super) fn header_size(s: &str) -> Result<usize, String> {
    match size(s)? {
        n @ 1024..=1_048_576 => Ok(n as usize),
        _ => Err("must be between 1KiB and 1MiB".into()),
    }
}

pub(super) fn body_size(s: &str) -> Result<u64, String> {
    match size(s)? {
        0 => Err("must be at least 1 byte".into()),
        n => Ok(n),
    }
}

pub(super) fn whole<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.trim()
        .parse()
        .map_err(|_| "is not a whole number in range".into())
}

pub(super) fn at_least_one<T: std::str::FromStr + Default + PartialEq>(
    s: &str,
) -> Result<T, String> {
    let n: T = whole(s)?;
    match n == T::default() {
        true => Err("must be at least 1".into()),
        false => Ok(n),
    }
}

pub(super) fn boolean(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("is not a boolean (true/false, yes/no, on/off, 1/0)".into()),
    }
}

/// `127.0.0.1:8080`, `[::1]:8080`, `localhost:8080` (→ 127.0.0.1), `:8080` (→ 0.0.0.0).
pub(super) fn socket(s: &str) -> Result<SocketAddr, String> {
    const WHY: &str =
        "is not a socket address like 127.0.0.1:8080, [::1]:8080, localhost:8080 or :8080";
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    let (host, port) = s.rsplit_once(':').ok_or(WHY)?;
    let port: u16 = port.parse().map_err(|_| WHY)?;
    match host {
        "" => Ok(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))),
        h if h.eq_ignore_ascii_case("localhost") => {
            Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        }
        _ => Err(WHY.into()),
    }
}

/// `http://host:port` (port defaults to 80); no TLS, path, query or credentials.
pub(super) fn upstream(s: &str) -> Result<http::Uri, String> {
    const WHY: &str = "is not an upstream URL like http://127.0.0.1:3000";
    let uri: http::Uri = s.trim().parse().map_err(|_| WHY)?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err("https upstreams are not supported; terminate TLS in front".into())
        }
        _ => return Err(WHY.into()),
    }
    let auth = uri.authority().ok_or(WHY)?;
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() || auth.as_str().contains('@') {
        return Err("must be just http://host:port, with no path, query or credentials".into());
    }
    let authority = format!("{}:{}", auth.host(), auth.port_u16().unwrap_or(80));
    let built = http::Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query("/")
        .build();
    built.map_err(|_| WHY.into())
}

pub(super) fn upstream_text(uri: &http::Uri) -> String {
    let authority = uri.authority().map_or("", |a| a.as_str());
    format!("{}://{authority}", uri.scheme_str().unwrap_or("http"))
}

pub(super) fn header_name(s: &str) -> Result<http::HeaderName, String> {
    http::HeaderName::from_bytes(s.as_bytes()).map_err(|_| "is not a valid HTTP header name".into())
}

/// Another replica: `host:port`, a name is fine (resolved by the gossip layer).
pub(super) fn peer(s: &str) -> Result<String, String> {
    const WHY: &str = "is not a peer address like 10.0.0.2:8081 or pollgate-1:8081";
    let (host, port) = s.rsplit_once(':').ok_or(WHY)?;
    let bad_host = host.is_empty() || host.contains(|c: char| c == '/' || c.is_whitespace());
    match bad_host || port.parse::<u16>().map_or(true, |p| p == 0) {
        true => Err(WHY.into()),
        false => Ok(s.to_string()),
    }
}

/// A Host header value for the upstream: `host[:port]`, nothing else.
pub(super) fn host(s: &str) -> Result<String, String> {
    const WHY: &str = "is not a host[:port] like app.internal or app.internal:8080";
    let plain = s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b));
    match plain && s.parse::<http::uri::Authority>().is_ok() {
        true => Ok(s.to_string()),
        false => Err(WHY.into()),
    }
}

pub(super) fn cidr(s: &str) -> Result<super::Cidr, String> {
    s.parse()
}

pub(super) fn non_empty(s: &str) -> Result<String, String> {
    match s.trim().is_empty() {
        true => Err("must not be empty".into()),
        false => Ok(s.to_string()),
    }
}

/// A name that goes into logs and gossip: visible characters, no spaces.
pub(super) fn word(s: &str) -> Result<String, String> {
    match s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        true => Err("must be non-empty, without spaces".into()),
        false => Ok(s.to_string()),
    }
}

/// A token is compared with an `Authorization` header, so it must fit one.
pub(super) fn secret(s: &str) -> Result<String, String> {
    if s == REDACTED {
        return Err(
            "is the placeholder --print-config shows for a secret; put the real value here".into(),
        );
    }
    match s.is_empty() || !s.bytes().all(|b| b.is_ascii_graphic()) {
        true => Err("must be a non-empty string of visible ASCII without spaces".into()),
        false => Ok(s.to_string()),
    }
}

pub(super) fn log_format(s: &str) -> Result<LogFormat, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err("is not a log format: text or json".into()),
    }
}

/// A `RUST_LOG`-style filter: `info`, `warn,pollgate=debug`.
pub(super) fn log_filter(s: &str) -> Result<String, String> {
    let s = s.trim();
    match tracing_subscriber::EnvFilter::builder().parse(s) {
        Ok(_) if !s.is_empty() => Ok(s.to_string()),
        Ok(_) => Err("is empty: a level (info, debug) or a RUST_LOG-style filter".into()),
        Err(e) => Err(format!(
            "is not a log filter like info or warn,pollgate=debug: {e}"
        )),
    }
}

pub(super) fn log_format_text(f: LogFormat) -> &'static str {
    match f {
        LogFormat::Text => "text",
        LogFormat::Json => "json",
    }
}

// ---------------------------------------------------------------------------
// Printers for `--print-config`: each writes what its parser reads back.

pub(super) fn text(s: impl std::fmt::Display) -> Option<Value> {
    Some(Value::String(s.to_string()))
}

pub(super) fn texts<T: std::fmt::Display>(items: impl Iterator<Item = T>) -> Option<Value> {
    Some(Value::Array(
        items.map(|s| Value::String(s.to_string())).collect(),
    ))
}

pub(super) fn dur(d: Duration) -> Option<Value> {
    text(duration_text(d))
}

/// `60s`, `250ms`: one unit, as the README and `--help` write durations
/// (humantime would print `1m`); finer than a millisecond falls back to it.
fn duration_text(d: Duration) -> String {
    match (d.subsec_nanos(), d.subsec_nanos() % 1_000_000) {
        (0, _) => format!("{}s", d.as_secs()),
        (_, 0) => format!("{}ms", d.as_millis()),
        _ => humantime::format_duration(d).to_string(),
    }
}

/// `X-Pollgate-Version`: HTTP keeps header names in lower case, people
/// write them capitalised.
pub(super) fn header_text(name: &http::HeaderName) -> String {
    let words = name.as_str().split('-').map(capitalised);
    words.collect::<Vec<_>>().join("-")
}

fn capitalised(word: &str) -> String {
    let mut chars = word.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_ascii_uppercase().to_string() + chars.as_str()
    })
}

pub(super) fn bytes(n: u64) -> Option<Value> {
    text(size_text(n))
}

/// An integer, or its text when it does not fit TOML's i64 (parsed back alike).
/// A `redis://` or `rediss://` URL as the Redis client reads it.
pub(super) fn redis_url(s: &str) -> Result<String, String> {
    if s.contains(REDACTED) {
        return secret(REDACTED);
    }
    check_redis_url(s).map(|()| s.to_string())
}

/// A URL with a password is a secret: shown as the placeholder.
pub(super) fn redis_url_text(url: &Option<String>) -> Option<Value> {
    let url = url.as_ref()?;
    match url.contains('@') {
        true => text(REDACTED),
        false => text(url),
    }
}

/// Longest stream name: its position is kept under that name in the snapshot.
pub const MAX_STREAM_NAME: usize = 1024;

/// Checks a `redis_url` the way the client will read it (scheme, host, db,
/// password), so a typo is a config error before any port is bound.
pub fn check_redis_url(url: &str) -> Result<(), String> {
    redis::Client::open(url)
        .map(drop)
        .map_err(|e| format!("not a redis:// or rediss:// URL: {e}"))
}

/// A stream's position is kept under its name in the snapshot (≤ 1 KiB).
pub(super) fn stream_name(s: &str) -> Result<String, String> {
    match s.is_empty() || s.len() > MAX_STREAM_NAME {
        true => Err("must be 1 to 1024 bytes".into()),
        false => Ok(s.to_string()),
    }
}

pub(super) fn int(n: u64) -> Option<Value> {
    Some(i64::try_from(n).map_or_else(|_| Value::String(n.to_string()), Value::Integer))
}

/// A repeatable secret: one placeholder per value; unset when there is none.
pub(super) fn redacted_all(secrets: &[String]) -> Option<Value> {
    (!secrets.is_empty())
        .then(|| texts(secrets.iter().map(|_| REDACTED)))
        .flatten()
}

/// A path key: its text, or unset.
pub(super) fn path_text(path: &Option<std::path::PathBuf>) -> Option<Value> {
    path.as_ref().and_then(|p| text(p.display()))
}

/// A secret read from its `_file` key is shown as unset: the file key is
/// printed instead, so the output loads again without "both given".
pub(super) fn unless_file(
    file: &Option<std::path::PathBuf>,
    shown: Option<Value>,
) -> Option<Value> {
    file.is_none().then_some(shown).flatten()
}

/// HS256 needs a key at least as long as its output to be worth its name.
pub(super) fn jwt_secret(s: &str) -> Result<String, String> {
    let s = secret(s)?;
    match s.len() < 32 {
        true => Err("must be at least 32 bytes".into()),
        false => Ok(s),
    }
}

/// `*`, or scheme://host[:port] as a browser sends it in `Origin`.
pub(super) fn origin(s: &str) -> Result<String, String> {
    let s = s.trim_end_matches('/');
    let ok = s == "*"
        || (s.starts_with("http://") || s.starts_with("https://"))
            && !s
                .split_once("://")
                .is_some_and(|(_, rest)| rest.is_empty() || rest.contains('/'));
    match ok {
        true => Ok(s.to_string()),
        false => Err("must be * or an origin such as https://app.example.com".into()),
    }
}

// ---------------------------------------------------------------------------
// "Did you mean": an unknown name is answered with the nearest key.

/// `what name: unknown, did you mean X?`, where X is the nearest key.
pub(super) fn unknown(what: &str, name: &str, as_key: &str, prefix: &str) -> String {
    match nearest(as_key) {
        Some(k) => format!(
            "{name}: unknown {what}, did you mean {prefix}{}?",
            cased(k, prefix)
        ),
        None => format!("{name}: unknown {what} (pollgate --help lists them all)"),
    }
}

/// A key name as written in the place it came from (`POLLGATE_` is upper case).
fn cased(name: &str, prefix: &str) -> String {
    match prefix.is_empty() {
        true => name.to_string(),
        false => name.to_ascii_uppercase(),
    }
}

/// The key closest to a typo, if it is close enough to be what was meant.
fn nearest(name: &str) -> Option<&'static str> {
    let (d, best) = KEYS
        .iter()
        .map(|k| (edit_distance(name, k.name), k.name))
        .min()?;
    (d <= 2.max(best.len() / 4)).then_some(best)
}

/// Levenshtein distance, one row at a time.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut row = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            row.push(
                (prev[j] + usize::from(ca != *cb))
                    .min(prev[j + 1] + 1)
                    .min(row[j] + 1),
            );
        }
        prev = row;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn durations() {
        for (text, want) in [
            ("250ms", Some(Duration::from_millis(250))),
            ("60s", Some(secs(60))),
            ("1h", Some(secs(3600))),
            ("1h 30m", Some(secs(5400))),
            ("0s", Some(secs(0))),
            ("60", None),
            ("abc", None),
            ("", None),
            ("-1s", None),
        ] {
            assert_eq!(duration(text).ok(), want, "{text:?}");
        }
        for d in [secs(0), secs(90), Duration::from_millis(1500), secs(86_400)] {
            assert_eq!(duration(&humantime::format_duration(d).to_string()), Ok(d));
        }
    }

    #[test]
    fn durations_print_in_one_unit_and_parse_back() {
        for (d, want) in [
            (secs(60), "60s"),
            (secs(0), "0s"),
            (secs(5400), "5400s"),
            (Duration::from_millis(250), "250ms"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_micros(1500), "1ms 500us"),
        ] {
            assert_eq!(duration_text(d), want);
            assert_eq!(duration(want), Ok(d), "{want}");
        }
    }

    #[test]
    fn header_names_print_capitalised_and_parse_back() {
        for (name, want) in [
            ("x-pollgate-version", "X-Pollgate-Version"),
            ("etag", "Etag"),
            ("x--odd-", "X--Odd-"),
        ] {
            let h = header_name(name).unwrap();
            assert_eq!(header_text(&h), want);
            assert_eq!(header_name(want), Ok(h));
        }
    }

    #[test]
    fn sizes() {
        for (text, want) in [
            ("512", Some(512)),
            ("1KB", Some(1000)),
            ("16KiB", Some(16384)),
            ("1mib", Some(1 << 20)),
            ("2 MB", Some(2_000_000)),
            ("1GiB", Some(1 << 30)),
            ("7b", Some(7)),
            ("1.5MiB", None),
            ("MiB", None),
            ("1TiB", None),
            ("", None),
            ("99999999999999999999GiB", None),
            ("18446744073709551615GiB", None),
        ] {
            assert_eq!(size(text).ok(), want, "{text:?}");
        }
        for n in [0, 1, 1000, 1024, 1536, 1 << 20, 3 << 30] {
            assert_eq!(size(&size_text(n)), Ok(n), "{n}");
        }
        assert_eq!(size_text(16 << 10), "16KiB");
    }

    #[test]
    fn socket_addresses() {
        for (text, want) in [
            ("127.0.0.1:8080", Some("127.0.0.1:8080")),
            (":8080", Some("0.0.0.0:8080")),
            ("localhost:1", Some("127.0.0.1:1")),
            ("[::1]:9", Some("[::1]:9")),
            ("8080", None),
            ("example.com:80", None),
            ("1.2.3.4:99999", None),
        ] {
            let want = want.map(|w| w.parse::<SocketAddr>().unwrap());
            assert_eq!(socket(text).ok(), want, "{text:?}");
        }
    }

    #[test]
    fn upstream_urls() {
        assert_eq!(
            upstream_text(&upstream("http://a:1").unwrap()),
            "http://a:1"
        );
        assert_eq!(
            upstream_text(&upstream("http://a/").unwrap()),
            "http://a:80"
        );
        assert_eq!(
            upstream_text(&upstream("http://[::1]:5").unwrap()),
            "http://[::1]:5"
        );
        assert!(upstream("https://a:1")
            .unwrap_err()
            .contains("terminate TLS in front"));
        for bad in [
            "http://a:1/path",
            "http://a:1?q",
            "http://u:p@a:1",
            "a:1",
            "ftp://a:1",
            "",
        ] {
            assert!(upstream(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn small_parsers() {
        for (t, want) in [
            ("true", Some(true)),
            ("ON", Some(true)),
            ("1", Some(true)),
            ("yes", Some(true)),
            ("false", Some(false)),
            ("off", Some(false)),
            ("0", Some(false)),
            ("No", Some(false)),
            ("y", None),
        ] {
            assert_eq!(boolean(t).ok(), want, "{t:?}");
        }
        assert_eq!(log_format("JSON"), Ok(LogFormat::Json));
        assert!(log_format("xml").is_err());
        assert!(header_name("X-Ok").is_ok() && header_name("bad header").is_err());
        assert!(
            peer("h:1").is_ok()
                && peer("h").is_err()
                && peer(":1").is_err()
                && peer("h:0").is_err()
        );
        assert!(secret("t").is_ok() && secret("").is_err() && secret("a b").is_err());
        assert_eq!(nearest("upstream_timout"), Some("upstream_timeout"));
        assert_eq!(nearest("zzzzzz"), None);
    }
}
