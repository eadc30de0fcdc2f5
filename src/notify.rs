//! systemd's readiness protocol (`sd_notify`, for `Type=notify`): one
//! datagram per state change to the unix socket named by `$NOTIFY_SOCKET`.
//! Without that variable (not started by systemd) every call is a no-op.
//!
//! What is sent: `READY=1` once `/readyz` would answer 200 (and again after
//! a reload), `RELOADING=1` while a reload runs, `STOPPING=1` when shutdown
//! starts, and a human `STATUS=` line with each (`systemctl status` shows it).
//!
//! The protocol is a handful of lines over a datagram socket, so it is
//! written here rather than taken from a crate: `libsystemd`'s `sd_notify`
//! does exactly this (plus file descriptor passing, which pollgate does not use).

use std::io;
use std::os::unix::net::UnixDatagram;
use std::sync::OnceLock;

/// Where the datagrams go; `None`: not run under systemd's notify protocol.
static TARGET: OnceLock<Option<Target>> = OnceLock::new();

struct Target {
    socket: UnixDatagram,
    addr: std::os::unix::net::SocketAddr,
}

/// Reads `$NOTIFY_SOCKET` once (later calls keep the first answer). A value
/// that is not a usable socket is logged and notifications are off.
pub fn init() {
    TARGET.get_or_init(|| {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        target(&path)
            .inspect_err(
                |e| tracing::warn!(error = %e, ?path, "NOTIFY_SOCKET unusable; no sd_notify"),
            )
            .ok()
    });
}

/// A path (`/run/systemd/notify`) or an abstract name (`@name`).
fn target(path: &std::ffi::OsStr) -> io::Result<Target> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => abstract_addr(name)?,
        None => std::os::unix::net::SocketAddr::from_pathname(path)?,
    };
    Ok(Target {
        socket: UnixDatagram::unbound()?,
        addr,
    })
}

#[cfg(target_os = "linux")]
fn abstract_addr(name: &[u8]) -> io::Result<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    std::os::unix::net::SocketAddr::from_abstract_name(name)
}

#[cfg(not(target_os = "linux"))]
fn abstract_addr(_: &[u8]) -> io::Result<std::os::unix::net::SocketAddr> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract sockets are Linux-only",
    ))
}

/// Whether notifications are on (`init` found a socket).
pub fn enabled() -> bool {
    TARGET.get().is_some_and(Option::is_some)
}

/// Sends `lines` (`KEY=value\n...`) as one datagram. Best effort: systemd
/// gone or the socket full is logged at debug and otherwise ignored.
pub fn send(lines: &str) {
    let Some(Some(t)) = TARGET.get() else { return };
    if let Err(e) = t.socket.send_to_addr(lines.as_bytes(), &t.addr) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// `/readyz` answers 200 now.
pub fn ready(status: &str) {
    send(&format!("READY=1\nSTATUS={status}\n"));
}

/// A reload starts; [`ready`] ends it.
pub fn reloading() {
    send(&format!(
        "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading the config\n",
        monotonic_usec()
    ));
}

/// Shutdown has started: draining.
pub fn stopping() {
    send("STOPPING=1\nSTATUS=draining connections\n");
}

/// `CLOCK_MONOTONIC` in microseconds, which systemd wants with `RELOADING=1`.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_and_an_abstract_name_both_reach_a_bound_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        let t = target(path.as_os_str()).unwrap();
        t.socket.send_to_addr(b"READY=1\n", &t.addr).unwrap();
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\n");

        let name = format!("pollgate-test-{}", std::process::id());
        let abs = abstract_addr(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&abs).unwrap();
        let t = target(std::ffi::OsStr::new(&format!("@{name}"))).unwrap();
        t.socket.send_to_addr(b"STOPPING=1\n", &t.addr).unwrap();
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1\n");
    }

    #[test]
    fn monotonic_clock_moves_forward() {
        let a = monotonic_usec();
        assert!(a > 0 && monotonic_usec() >= a);
    }
}
