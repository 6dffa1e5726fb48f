//! The userland port proxy: a host socket per published port, relaying to the container's
//! address (as `docker-proxy` does). Unlike DNAT it works for connections from the host's own
//! loopback, needs no `route_localnet`, and its bind reports a taken port at once.
//!
//! A [`Binding`] owns its listening socket and threads; dropping it stops them.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{Error, PortSpec, Protocol};

/// Connections relayed at once per published TCP port; more wait in the listen backlog.
const MAX_TCP_CONNECTIONS: usize = 512;
/// Distinct UDP clients relayed at once per published port.
const MAX_UDP_CLIENTS: usize = 256;
/// A UDP client's relay ends after this long without traffic.
const UDP_IDLE: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(250);

/// A published port that is being relayed.
pub struct Binding {
    /// What was asked, with the host port actually bound (never 0).
    pub spec: PortSpec,
    pub target: SocketAddr,
    stop: Arc<AtomicBool>,
    /// The listening TCP socket's fd, shut down to wake the accept loop.
    wake: Option<TcpListener>,
}

impl Drop for Binding {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(listener) = &self.wake {
            // SAFETY: shutdown(2) on a socket fd this binding owns (the listener stays open
            // until `self` is dropped); it wakes the thread blocked in accept(2).
            unsafe {
                libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR);
            }
        }
    }
}

/// Binds `spec`'s host address and port and relays to `target`. `what` names the container
/// in errors. A taken port is [`Error::PortInUse`].
pub fn publish(spec: &PortSpec, target: SocketAddr, what: &str) -> Result<Binding, Error> {
    let ip = spec.host_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let addr = SocketAddr::new(ip, spec.host_port);
    let proto = spec.protocol.as_str();
    let bind_error = |source: std::io::Error| {
        if source.kind() == ErrorKind::AddrInUse {
            Error::PortInUse { what: what.to_owned(), ip: ip.to_string(), port: spec.host_port, proto }
        } else {
            Error::Publish { what: what.to_owned(), ip: ip.to_string(), port: spec.host_port, proto, source }
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let mut bound = spec.clone();
    let wake = match spec.protocol {
        Protocol::Tcp => {
            let listener = TcpListener::bind(addr).map_err(bind_error)?;
            bound.host_port = listener.local_addr().map_err(bind_error)?.port();
            let accept = listener.try_clone().map_err(bind_error)?;
            let stop = Arc::clone(&stop);
            spawn("proxy-tcp", move || tcp_accept_loop(&accept, target, &stop)).map_err(bind_error)?;
            Some(listener)
        }
        Protocol::Udp => {
            let socket = UdpSocket::bind(addr).map_err(bind_error)?;
            bound.host_port = socket.local_addr().map_err(bind_error)?.port();
            socket.set_read_timeout(Some(POLL)).map_err(bind_error)?;
            let stop = Arc::clone(&stop);
            spawn("proxy-udp", move || udp_loop(&socket, target, &stop)).map_err(bind_error)?;
            None
        }
    };
    tracing::debug!(%bound, %target, "publishing");
    Ok(Binding { spec: bound, target, stop, wake })
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    std::thread::Builder::new().name(name.into()).spawn(f).map(drop)
}

fn tcp_accept_loop(listener: &TcpListener, target: SocketAddr, stop: &Arc<AtomicBool>) {
    let active = Arc::new(AtomicUsize::new(0));
    for client in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let client = match client {
            Ok(client) => client,
            Err(e) if matches!(e.kind(), ErrorKind::Interrupted | ErrorKind::ConnectionAborted) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "accept");
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(POLL);
                continue;
            }
        };
        while active.load(Ordering::SeqCst) >= MAX_TCP_CONNECTIONS && !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10));
        }
        active.fetch_add(1, Ordering::SeqCst);
        let active = Arc::clone(&active);
        let spawned = spawn("proxy-conn", move || {
            relay_tcp(client, target);
            active.fetch_sub(1, Ordering::SeqCst);
        });
        if spawned.is_err() {
            tracing::warn!("cannot start a proxy thread; dropping a connection");
        }
    }
}

fn relay_tcp(client: TcpStream, target: SocketAddr) {
    let upstream = match TcpStream::connect_timeout(&target, CONNECT_TIMEOUT) {
        Ok(upstream) => upstream,
        Err(e) => {
            tracing::debug!(error = %e, %target, "connecting to the container");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (Ok(client2), Ok(upstream2)) = (client.try_clone(), upstream.try_clone()) else { return };
    let back = std::thread::Builder::new().name("proxy-back".into()).spawn(move || pipe(upstream2, client2));
    pipe(client, upstream);
    if let Ok(back) = back {
        let _ = back.join();
    }
}

/// Copies until EOF, then half-closes the other side so it sees the end too.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}

struct UdpClient {
    upstream: UdpSocket,
    last: Arc<Mutex<Instant>>,
}

fn udp_loop(socket: &UdpSocket, target: SocketAddr, stop: &Arc<AtomicBool>) {
    let mut clients: HashMap<SocketAddr, UdpClient> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::SeqCst) {
        let (n, from) = match socket.recv_from(&mut buf) {
            Ok(got) => got,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                clients.retain(|_, c| c.last.lock().map(|t| t.elapsed() < UDP_IDLE).unwrap_or(false));
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "udp receive");
                std::thread::sleep(POLL);
                continue;
            }
        };
        if !clients.contains_key(&from) {
            if clients.len() >= MAX_UDP_CLIENTS {
                continue;
            }
            match udp_client(socket, from, target, stop) {
                Ok(client) => {
                    clients.insert(from, client);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "udp relay");
                    continue;
                }
            }
        }
        if let Some(client) = clients.get(&from) {
            if let Ok(mut last) = client.last.lock() {
                *last = Instant::now();
            }
            let _ = client.upstream.send(&buf[..n]);
        }
    }
}

/// A socket connected to the container for one UDP client, and the thread returning replies.
fn udp_client(
    socket: &UdpSocket,
    client: SocketAddr,
    target: SocketAddr,
    stop: &Arc<AtomicBool>,
) -> std::io::Result<UdpClient> {
    let local: SocketAddr = if target.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let upstream = UdpSocket::bind(local)?;
    upstream.connect(target)?;
    upstream.set_read_timeout(Some(POLL))?;
    let last = Arc::new(Mutex::new(Instant::now()));
    let (replies, back, stop, seen) =
        (upstream.try_clone()?, socket.try_clone()?, Arc::clone(stop), Arc::clone(&last));
    spawn("proxy-udp-back", move || {
        let mut buf = vec![0u8; 65536];
        while !stop.load(Ordering::SeqCst) {
            match replies.recv(&mut buf) {
                Ok(n) => {
                    let _ = back.send_to(&buf[..n], client);
                    if let Ok(mut last) = seen.lock() {
                        *last = Instant::now();
                    }
                }
                Err(_) => {
                    if seen.lock().map(|t| t.elapsed() >= UDP_IDLE).unwrap_or(true) {
                        return;
                    }
                }
            }
        }
    })?;
    Ok(UdpClient { upstream, last })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn spec(s: &str) -> PortSpec {
        PortSpec::parse(s).unwrap()
    }

    #[test]
    fn tcp_is_relayed_both_ways_with_half_close() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = server.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut conn, _) = server.accept().unwrap();
            let mut got = Vec::new();
            conn.read_to_end(&mut got).unwrap();
            conn.write_all(&[b"echo:".as_slice(), &got].concat()).unwrap();
        });
        let binding = publish(&spec("127.0.0.1::80"), target, "test").unwrap();
        assert_ne!(binding.spec.host_port, 0);
        let mut client = TcpStream::connect(("127.0.0.1", binding.spec.host_port)).unwrap();
        client.write_all(b"hello").unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        let mut reply = String::new();
        client.read_to_string(&mut reply).unwrap();
        assert_eq!(reply, "echo:hello");
    }

    #[test]
    fn a_taken_port_is_a_clear_error_and_drop_frees_it() {
        let target: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let first = publish(&spec("127.0.0.1::80"), target, "first").unwrap();
        let port = first.spec.host_port;
        let taken = PortSpec { host_port: port, ..spec("127.0.0.1::80") };
        let err = publish(&taken, target, "container web").err().unwrap().to_string();
        assert_eq!(
            err,
            format!("publishing container web: host port {port}/tcp on 127.0.0.1 is already in use")
        );
        drop(first);
        let mut again = None;
        for _ in 0..50 {
            if let Ok(b) = publish(&taken, target, "again") {
                again = Some(b);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(again.is_some(), "the port is free once the binding is dropped");
    }

    #[test]
    fn udp_is_relayed_per_client() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let target = server.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 100];
            for _ in 0..2 {
                let (n, from) = server.recv_from(&mut buf).unwrap();
                server.send_to(&[b"re:".as_slice(), &buf[..n]].concat(), from).unwrap();
            }
        });
        let binding = publish(&spec("127.0.0.1::53/udp"), target, "test").unwrap();
        for word in ["a", "b"] {
            let client = UdpSocket::bind("127.0.0.1:0").unwrap();
            client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            client.send_to(word.as_bytes(), ("127.0.0.1", binding.spec.host_port)).unwrap();
            let mut buf = [0u8; 100];
            let n = client.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], format!("re:{word}").as_bytes());
        }
    }
}
