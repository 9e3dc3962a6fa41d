//! systemd readiness and watchdog (`Type=notify`, `WatchdogSec=`), without a library: one
//! datagram to `$NOTIFY_SOCKET` per message. Outside systemd every call is a no-op.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Sends one notification (`READY=1`, `STOPPING=1`, `WATCHDOG=1`, `STATUS=…`).
pub fn notify(message: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(socket) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let result = if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        abstract_address(abstract_name)
            .and_then(|addr| socket.send_to_addr(message.as_bytes(), &addr))
    } else {
        socket.send_to(message.as_bytes(), &path)
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

#[cfg(target_os = "linux")]
fn abstract_address(name: &[u8]) -> std::io::Result<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    std::os::unix::net::SocketAddr::from_abstract_name(name)
}

#[cfg(not(target_os = "linux"))]
fn abstract_address(_: &[u8]) -> std::io::Result<std::os::unix::net::SocketAddr> {
    Err(std::io::Error::other("abstract sockets are Linux-only"))
}

/// Half the watchdog interval systemd asked for (`$WATCHDOG_USEC`), if it asked.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}
