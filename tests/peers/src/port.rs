//! Free TCP ports on loopback, for peers whose address must be written into a config before
//! they start. A server the test runs itself binds port 0 instead.

/// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, read back, released).
/// Another process may take it before the caller binds it; callers that start a peer on it
/// retry with a fresh port when the peer cannot bind.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}
