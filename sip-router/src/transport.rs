//! Sockets: the UDP socket (a large receive buffer, read by several
//! receiver tasks so a burst does not overflow it while a core is idle),
//! the TCP listener and its connections (framed by Content-Length), and
//! the send path every shard and the control task use: UDP datagrams, or
//! the TCP connection a peer's request came on.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::dispatch::Dispatcher;
use crate::wire;

/// TCP connections held at most.
pub const MAX_TCP: usize = 1_024;
/// TCP connections from one source IP at most.
pub const MAX_TCP_PER_SOURCE: usize = 64;
/// A TCP connection silent this long is closed (slowloris).
pub const TCP_IDLE: Duration = Duration::from_secs(60);

/// Where a message came from, and how to answer it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Peer {
    pub addr: SocketAddr,
    /// TCP connection id; `None` for UDP.
    pub tcp: Option<u64>,
}

impl Peer {
    pub fn udp(addr: SocketAddr) -> Peer {
        Peer { addr, tcp: None }
    }
}

struct Conn {
    tx: mpsc::Sender<Vec<u8>>,
    addr: SocketAddr,
}

/// The node's sockets, shared by every task.
pub struct Transport {
    pub udp: Arc<UdpSocket>,
    conns: Mutex<HashMap<u64, Conn>>,
}

/// Binds the UDP socket with a receive buffer of `recv_buffer` bytes
/// (SO_RCVBUFFORCE when the process may, else SO_RCVBUF up to
/// `net.core.rmem_max`) and returns it with the size the kernel granted.
pub fn bind_udp(addr: SocketAddr, recv_buffer: usize) -> std::io::Result<(UdpSocket, usize)> {
    let sock = std::net::UdpSocket::bind(addr)?;
    sock.set_nonblocking(true)?;
    if recv_buffer > 0 {
        use rustix::net::sockopt;
        if sockopt::set_socket_recv_buffer_size_force(&sock, recv_buffer).is_err() {
            let _ = sockopt::set_socket_recv_buffer_size(&sock, recv_buffer);
        }
    }
    // The kernel reports twice what it books for the payload.
    let granted = rustix::net::sockopt::socket_recv_buffer_size(&sock).unwrap_or(0);
    Ok((UdpSocket::from_std(sock)?, granted))
}

impl Transport {
    pub fn new(udp: Arc<UdpSocket>) -> Transport {
        Transport {
            udp,
            conns: Mutex::new(HashMap::new()),
        }
    }

    /// Sends to a peer: over its TCP connection when it has one open,
    /// else as a UDP datagram. `false` when it could not be sent.
    pub fn send(&self, to: Peer, bytes: Vec<u8>) -> bool {
        match to.tcp {
            Some(id) => {
                let conns = self.conns.lock().expect("conns lock");
                match conns.get(&id) {
                    Some(c) => c.tx.try_send(bytes).is_ok(),
                    None => false,
                }
            }
            None => self.send_udp(to.addr, &bytes),
        }
    }

    pub fn send_udp(&self, addr: SocketAddr, bytes: &[u8]) -> bool {
        match self.udp.try_send_to(bytes, addr) {
            Ok(_) => true,
            Err(e) => {
                debug!(to = %addr, cause = %e, "udp send failed");
                false
            }
        }
    }

    /// An open TCP connection from `addr`, if any.
    pub fn tcp_from(&self, addr: SocketAddr) -> Option<u64> {
        let conns = self.conns.lock().expect("conns lock");
        conns
            .iter()
            .find(|(_, c)| c.addr == addr)
            .map(|(id, _)| *id)
    }

    fn open(&self, id: u64, addr: SocketAddr, tx: mpsc::Sender<Vec<u8>>) {
        self.conns
            .lock()
            .expect("conns lock")
            .insert(id, Conn { tx, addr });
    }

    fn close(&self, id: u64) {
        self.conns.lock().expect("conns lock").remove(&id);
    }

    fn conns_from(&self, ip: std::net::IpAddr) -> usize {
        let conns = self.conns.lock().expect("conns lock");
        conns.values().filter(|c| c.addr.ip() == ip).count()
    }
}

/// Reads UDP datagrams and hands them to the dispatcher. Several run on
/// one socket.
pub async fn udp_receiver(t: Arc<Transport>, d: Dispatcher) {
    let mut buf = vec![0u8; 65_535];
    loop {
        match t.udp.recv_from(&mut buf).await {
            Ok((n, addr)) => {
                if n == 0 || buf[..n].iter().all(|b| matches!(b, b'\r' | b'\n')) {
                    continue; // keep-alive
                }
                if !d.dispatch(buf[..n].to_vec(), Peer::udp(addr)).await {
                    return;
                }
            }
            Err(e) => {
                // ICMP port unreachable surfaces here on Linux; keep serving.
                debug!(cause = %e, "udp receive error");
            }
        }
    }
}

/// Accepts TCP connections (at most [`MAX_TCP`], [`MAX_TCP_PER_SOURCE`]
/// per source IP) and frames their messages by Content-Length. A message
/// must arrive whole within `message_timeout` of its first byte
/// (slowloris, Content-Length larger than what is sent), else the
/// connection is answered 400 when possible and closed.
pub async fn tcp_acceptor(
    listener: TcpListener,
    t: Arc<Transport>,
    d: Dispatcher,
    message_timeout: Duration,
) {
    let mut next_id = 1u64;
    let open = Arc::new(AtomicUsize::new(0));
    // Aborting the acceptor drops the set, which aborts every connection
    // (and with them their handles on the sinks: the node can flush).
    let mut conns = tokio::task::JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let Ok((stream, addr)) = listener.accept().await else {
            continue;
        };
        if open.load(Ordering::Relaxed) >= MAX_TCP {
            metrics::counter!("dialmark_tcp_refused_total", "why" => "node_limit").increment(1);
            continue;
        }
        if t.conns_from(addr.ip()) >= MAX_TCP_PER_SOURCE {
            metrics::counter!("dialmark_tcp_refused_total", "why" => "source_limit").increment(1);
            warn!(source = %addr.ip(), "tcp connection refused: per-source limit");
            continue;
        }
        let id = next_id;
        next_id += 1;
        // Registered before the next accept, so the per-source count is exact.
        let (out_tx, out_rx) = mpsc::channel::<Vec<u8>>(256);
        t.open(id, addr, out_tx.clone());
        let (t, d, open) = (t.clone(), d.clone(), open.clone());
        open.fetch_add(1, Ordering::Relaxed);
        conns.spawn(async move {
            tcp_conn(stream, addr, id, (out_tx, out_rx), &d, message_timeout).await;
            t.close(id);
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

async fn tcp_conn(
    stream: tokio::net::TcpStream,
    addr: SocketAddr,
    id: u64,
    (out_tx, mut out_rx): (mpsc::Sender<Vec<u8>>, mpsc::Receiver<Vec<u8>>),
    d: &Dispatcher,
    message_timeout: Duration,
) {
    let (mut rd, mut wr) = stream.into_split();
    // An empty buffer asks the writer to flush and close.
    let writer = tokio::spawn(async move {
        while let Some(b) = out_rx.recv().await {
            if b.is_empty() || wr.write_all(&b).await.is_err() {
                let _ = wr.shutdown().await;
                return;
            }
        }
    });
    let refuse = |bytes: &[u8], e: &wire::ParseError| {
        metrics::counter!("dialmark_sip_invalid_total").increment(1);
        debug!(peer = %addr, cause = %e, "tcp message refused; closing");
        wire::error_reply(bytes, e)
    };
    let mut framer = wire::Framer::default();
    let mut chunk = vec![0u8; 16_384];
    // When the first byte of the message now buffered arrived.
    let mut started: Option<tokio::time::Instant> = None;
    let mut last_words = None;
    'conn: loop {
        let wait = match started {
            Some(s) => (s + message_timeout).saturating_duration_since(tokio::time::Instant::now()),
            None => TCP_IDLE,
        };
        let n = match tokio::time::timeout(wait, rd.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Err(_) if started.is_some() => {
                last_words = refuse(
                    framer.buffered(),
                    &wire::ParseError::Bad("message: not complete in time"),
                );
                break;
            }
            Err(_) => break,
            Ok(Ok(n)) => n,
        };
        framer.push(&chunk[..n]);
        loop {
            match framer.next_message() {
                Ok(Some(bytes)) => {
                    started = None;
                    let from = Peer {
                        addr,
                        tcp: Some(id),
                    };
                    if !d.dispatch(bytes, from).await {
                        break 'conn;
                    }
                }
                Ok(None) => {
                    if !framer.buffered().is_empty() && started.is_none() {
                        started = Some(tokio::time::Instant::now());
                    }
                    break;
                }
                Err(e) => {
                    last_words = refuse(framer.buffered(), &e);
                    break 'conn;
                }
            }
        }
    }
    if let Some(reply) = last_words {
        let _ = out_tx.send(reply).await;
    }
    let _ = out_tx.send(Vec::new()).await;
    drop(out_tx);
    if tokio::time::timeout(Duration::from_secs(2), writer)
        .await
        .is_err()
    {
        debug!(peer = %addr, "tcp writer did not finish; dropped");
    }
}

/// Logs the receive buffer the kernel granted against what was asked.
pub fn report_recv_buffer(asked: usize, granted: usize) {
    metrics::gauge!("dialmark_udp_recv_buffer_bytes").set(granted as f64);
    if granted / 2 < asked {
        warn!(
            asked,
            granted,
            "udp receive buffer smaller than configured: raise net.core.rmem_max or run with CAP_NET_ADMIN"
        );
    } else {
        info!(granted, "udp receive buffer");
    }
}
