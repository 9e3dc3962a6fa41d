//! Free TCP ports on loopback, for peers whose address must be written into a config before
//! they start. A server the test runs itself binds port 0 instead.
//!
//! Tests run side by side in one process and each starts peers on ports it picked, so a port
//! must be picked once, be shown to belong to the peer that was started on it, and stay out of
//! reach of other tests while its peer is down for a restart:
//! - [`free_port`] never hands out the same port twice in one process;
//! - [`listens_on`] tells whether a given process (not just anybody) listens on a port, and
//!   [`wait_listening`] waits for a peer just spawned to do so;
//! - [`RefusedPort::hold`] keeps a stopped peer's port from being handed to anybody else until
//!   the peer binds it again.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::Child;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Every port [`free_port`] handed out in this process.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, read back, released)
/// and that no earlier call in this process returned: two tests running side by side never get
/// the same port from here. Another process, or a server binding port 0, may still take it
/// before the caller binds it; callers that start a peer on it check with [`listens_on`] and
/// retry with a fresh port.
pub fn free_port() -> u16 {
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let handed_out = handed_out.get_or_insert_with(HashSet::new);
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("bind 127.0.0.1:0");
        if handed_out.insert(port) {
            return port;
        }
    }
}

/// Whether process `pid` has a socket listening on TCP `port` (any address, IPv4 or IPv6):
/// read from `/proc/net/tcp{,6}` and the process's open files. A connection that succeeds
/// proves only that *somebody* listens there, possibly another test's peer.
pub fn listens_on(pid: u32, port: u16) -> bool {
    let mut inodes = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            let local_port = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) && *state == "0A" {
                inodes.insert(format!("socket:[{inode}]"));
            }
        }
    }
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|target| inodes.contains(target.to_string_lossy().as_ref()))
    })
}

/// How a peer's start went, as [`wait_listening`] saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// The peer's own process listens on every port.
    Listening,
    /// It exited first (a port was taken, say); the child was reaped and taken.
    Exited,
    /// Neither within the time given.
    TimedOut,
}

/// Waits until `child` listens on every one of `ports` ([`listens_on`]), polling every 20 ms
/// for at most `within`. A child that exits meanwhile is reaped and set to `None`.
pub fn wait_listening(child: &mut Option<Child>, ports: &[u16], within: Duration) -> Start {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let Some(c) = child.as_mut() else {
            return Start::Exited;
        };
        if let Ok(Some(_)) = c.try_wait() {
            *child = None;
            return Start::Exited;
        }
        let pid = c.id();
        if ports.iter().all(|p| listens_on(pid, *p)) {
            return Start::Listening;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Start::TimedOut
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

    /// Holds `port`, a stopped peer's, on 127.0.0.1 so that nobody else is given it while the
    /// peer is down: port-0 binds pass it over and connections to it are refused. Unlike
    /// [`RefusedPort::bind`] it sets `SO_REUSEADDR`, as the peer does, so the peer can bind the
    /// port again while it is held (and despite connections of its last life in `TIME_WAIT`);
    /// drop it once the peer listens. An error if somebody else has the port already.
    pub fn hold(port: u16) -> std::io::Result<RefusedPort> {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        socket.bind(&addr.into())?;
        Ok(RefusedPort {
            _socket: socket,
            port,
        })
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

    #[test]
    fn free_port_never_hands_out_a_port_twice() {
        let ports: Vec<u16> = (0..2_000).map(|_| free_port()).collect();
        let distinct: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len());
    }

    #[test]
    fn listens_on_names_the_listening_process_only() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(listens_on(std::process::id(), port));
        // Another process does not own it, even though a connection would succeed.
        let mut other = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        assert!(!listens_on(other.id(), port));
        other.kill().unwrap();
        other.wait().unwrap();
        drop(listener);
        assert!(!listens_on(std::process::id(), port), "closed");
    }

    #[test]
    fn a_held_port_is_refused_passed_over_by_port_0_and_rebound_by_its_server() {
        let port = free_port();
        let held = RefusedPort::hold(port).expect("hold a free port");
        let err = std::net::TcpStream::connect(("127.0.0.1", port)).expect_err("refused");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
        for _ in 0..5_000 {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            assert_ne!(
                l.local_addr().unwrap().port(),
                port,
                "port 0 gave the held port"
            );
        }
        // Its server (SO_REUSEADDR, as std's listener and mosquitto set) binds it while held.
        let server = std::net::TcpListener::bind(("127.0.0.1", port)).expect("rebind held port");
        assert!(listens_on(std::process::id(), port));
        drop(held);
        std::net::TcpStream::connect(("127.0.0.1", port)).expect("the server answers");
        drop(server);
    }
}
