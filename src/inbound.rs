//! Reading requests before they are trusted: on the internal listener
//! (publish, admin, gossip) bearer tokens compared in constant time, bodies
//! bounded in size and time; on the public one, methods and Host screened.

use http::{header, Method, Request, Version};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use subtle::ConstantTimeEq;

use crate::error::Error;

/// Bearer check in constant time against every accepted token (several
/// during a rotation). None configured → 403 saying how to set one.
pub fn authorize<B>(tokens: &[String], req: &Request<B>, key: &'static str) -> Result<(), Error> {
    if tokens.is_empty() {
        return Err(Error::Forbidden(match key {
            "admin_token" => "admin is disabled: set admin_token (--admin-token or POLLGATE_ADMIN_TOKEN)",
            _ => "publishing is disabled: set publish_token (--publish-token or POLLGATE_PUBLISH_TOKEN)",
        }));
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .unwrap_or(b"");
    // Every token is compared, so the time does not tell which one matched;
    // as SHA-256 digests, since comparing raw bytes returns early on a length
    // mismatch and so tells a token's length.
    let given = digest(given);
    let matched = tokens.iter().fold(subtle::Choice::from(0), |m, t| {
        m | given.ct_eq(&digest(t.as_bytes()))
    });
    match bool::from(matched) {
        true => Ok(()),
        false => Err(Error::Unauthorized),
    }
}

fn digest(b: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(b).into()
}

/// Longest wait for a whole internal-listener body (publish, config, gossip):
/// a 1 MiB batch takes milliseconds on any working link; slower is a stuck sender.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Reads at most `limit` bytes within [`BODY_TIMEOUT`]; a declared or actual larger body → 413.
pub async fn read_body(req: Request<Incoming>, limit: u64) -> Result<bytes::Bytes, Error> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(Error::TooLarge { limit });
    }
    let collect = Limited::new(req.into_body(), limit as usize).collect();
    let collected = tokio::time::timeout(BODY_TIMEOUT, collect)
        .await
        .map_err(|_| Error::BodyTimeout(BODY_TIMEOUT))?;
    match collected {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Error::TooLarge { limit }),
        Err(e) => Err(Error::BadRequestOwned(format!("could not read body: {e}"))),
    }
}

/// What the public listener refuses before routing (RFC 9112 §3.2, RFC 9110
/// §9.3.6/§9.3.8): requests a reverse proxy must not forward as they are.
/// Cheap enough for the hit path: a method compare and one header scan.
pub fn screen<B>(req: &Request<B>) -> Result<(), Error> {
    match *req.method() {
        Method::CONNECT => return Err(Error::MethodNotAllowed), // we are no tunnel
        Method::TRACE => return Err(Error::MethodNotAllowed),   // would echo credentials
        Method::OPTIONS if req.uri() == "*" => {
            return Err(Error::NotImplemented("OPTIONS * is not answered"))
        }
        _ => {}
    }
    host(req).map(|_| ())
}

/// The request's one valid Host: a second Host, an HTTP/1.1 request without
/// one, or a value that is not `host[:port]` is a 400. An app that varies by
/// Host must never see a Host the client could make ambiguous.
pub fn host<B>(req: &Request<B>) -> Result<Option<&[u8]>, Error> {
    let mut all = req.headers().get_all(header::HOST).iter();
    let first = all.next();
    if all.next().is_some() {
        return Err(Error::BadRequest("more than one Host header"));
    }
    let Some(v) = first else {
        return match req.version() {
            Version::HTTP_11 => Err(Error::BadRequest("HTTP/1.1 request without Host")),
            _ => Ok(None),
        };
    };
    let v = v.as_bytes();
    if !valid_host(v) {
        return Err(Error::BadRequest("Host must be host[:port]"));
    }
    Ok(Some(v))
}

/// The bytes of a host name: ASCII letters and digits, `-`, `.`, `_`. A
/// table, not a chain of range checks: every request's Host goes through it.
const NAME_BYTE: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric() || c == b'-' || c == b'.' || c == b'_';
        b += 1;
    }
    t
};

/// `reg-name` or IP literal, optional `:port`; no userinfo, path or query.
fn valid_host(v: &[u8]) -> bool {
    let (name, port) = match v.iter().rposition(|&b| b == b':') {
        Some(i) if !v[i..].contains(&b']') => (&v[..i], Some(&v[i + 1..])),
        _ => (v, None),
    };
    let literal = name.len() > 2 && name[0] == b'[' && name[name.len() - 1] == b']';
    let name_valid = if literal {
        std::str::from_utf8(&name[1..name.len() - 1])
            .is_ok_and(|s| s.parse::<std::net::Ipv6Addr>().is_ok())
    } else {
        !name.is_empty() && name.len() <= 253 && name.iter().all(|&b| NAME_BYTE[b as usize])
    };
    let port_valid =
        port.is_none_or(|p| (1..=5).contains(&p.len()) && p.iter().all(u8::is_ascii_digit));
    name_valid && port_valid
}

/// Longest key scoped by Host (`host_keys`): the key rules' 128 bytes.
const MAX_SCOPED: usize = 128;

/// `<host>:<key>` in a stack buffer, the host lowercased: the table key
/// when `host_keys` is on, so a tenant's versions never answer another's
/// polls. No allocation, so the hit path stays allocation-free.
pub struct ScopedKey {
    buf: [u8; MAX_SCOPED],
    len: usize,
}

impl ScopedKey {
    /// `None` when the result would break the key rules (too long, or an
    /// IPv6 literal's brackets, which keys do not allow).
    pub fn new(host: &[u8], key: &str) -> Option<ScopedKey> {
        let len = host.len() + 1 + key.len();
        if len > MAX_SCOPED || host.iter().any(|b| matches!(b, b'[' | b']')) {
            return None;
        }
        let mut buf = [0u8; MAX_SCOPED];
        buf[..host.len()].copy_from_slice(host);
        buf[..host.len()].make_ascii_lowercase();
        buf[host.len()] = b':';
        buf[host.len() + 1..len].copy_from_slice(key.as_bytes());
        Some(ScopedKey { buf, len })
    }

    pub fn as_str(&self) -> &str {
        // Host bytes were checked ASCII (`valid_host`), the key is a &str.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(hosts: &[&str], v: Version) -> Request<()> {
        let mut r = Request::builder().uri("/p").version(v);
        for h in hosts {
            r = r.header(header::HOST, *h);
        }
        r.body(()).unwrap()
    }

    #[test]
    fn bearer_must_match_exactly() {
        let with = |v: &str| {
            Request::builder()
                .header(header::AUTHORIZATION, v)
                .body(())
                .unwrap()
        };
        assert!(authorize(&["tok".to_string()], &with("Bearer tok"), "publish_token").is_ok());
        for bad in ["Bearer to", "Bearer tok2", "Bearer ", "tok", "Bearer TOK"] {
            assert!(
                authorize(&["tok".to_string()], &with(bad), "publish_token").is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn host_must_be_one_and_well_formed() {
        assert!(host(&req(&["a.example:8080"], Version::HTTP_11)).is_ok());
        assert!(host(&req(&["[::1]:80"], Version::HTTP_11)).is_ok());
        assert!(host(&req(&[], Version::HTTP_10)).is_ok());
        assert!(host(&req(&[], Version::HTTP_11)).is_err());
        assert!(host(&req(&["a", "b"], Version::HTTP_11)).is_err());
        for bad in ["evil/x?y", "u@h", "", "a b", "h:port"] {
            assert!(host(&req(&[bad], Version::HTTP_11)).is_err(), "{bad}");
        }
    }

    #[test]
    fn scoped_keys_lowercase_the_host_and_respect_the_length() {
        let k = ScopedKey::new(b"App.Example", "p1").unwrap();
        assert_eq!(k.as_str(), "app.example:p1");
        assert!(ScopedKey::new(&[b'a'; 120], "p12345678").is_none());
        assert!(ScopedKey::new(b"[::1]", "p").is_none());
    }
}
