//! Free TCP ports on loopback, for peers whose address must be written into a config before
//! they start. A server the test runs itself binds port 0 instead.

use std::net::SocketAddr;

/// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, read back, released).
/// Another process may take it before the caller binds it; callers that start a peer on it
/// retry with a fresh port when the peer cannot bind.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// A TCP port on 127.0.0.1 where every connection is refused, for as long as this value lives:
/// a cloud that is down. The port is held bound but never listened on, so nobody else (another
/// test's admin API, a later [`free_port`]) can take it and answer instead.
#[derive(Debug)]
pub struct RefusedPort {
    /// Never read: holding it keeps the port bound.
    _socket: socket2::Socket,
    port: u16,
}

impl RefusedPort {
    /// Binds a fresh port without listening on it.
    pub fn bind() -> RefusedPort {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("a TCP socket");
        let any: SocketAddr = ([127, 0, 0, 1], 0).into();
        socket.bind(&any.into()).expect("bind 127.0.0.1:0");
        let port = socket
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .map(|a| a.port())
            .expect("the bound address");
        RefusedPort {
            _socket: socket,
            port,
        }
    }

    /// The port number.
    pub fn port(&self) -> u16 {
        self.port
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_port_refuses_connections_and_cannot_be_taken() {
        let refused = RefusedPort::bind();
        let err = std::net::TcpStream::connect(("127.0.0.1", refused.port()))
            .expect_err("nothing listens");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", refused.port())).is_err(),
            "the port is held while the value lives"
        );
        let port = refused.port();
        drop(refused);
        std::net::TcpListener::bind(("127.0.0.1", port)).expect("released when dropped");
    }
}
