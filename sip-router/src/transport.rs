//! Sockets: the UDP socket (a large receive buffer, read by several
//! receiver tasks so a burst does not overflow it while a core is idle),
//! the TCP listener and its connections (framed by Content-Length), and
//! the send path every shard and the control task use: UDP datagrams, the
//! TCP connection a peer's request came on, or a TCP connection the node
//! opens itself (to a TCP trunk, or back to a carrier whose connection is
//! gone) and keeps while it is used, reading replies and requests from it
//! like from any other (RFC 5923-style reuse).
//!
//! Every datagram carries the kernel's arrival stamp: the time it waited
//! in the socket's buffer counts as queueing like the shards' own, so a
//! node whose receivers fall behind sheds new calls before the buffer
//! overflows, and the socket's drop counter is exported for the NOC.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
/// A TCP connection silent this long is closed (slowloris). Dialogs keep
/// theirs busy with their own requests; an idle one is reopened on demand.
pub const TCP_IDLE: Duration = Duration::from_secs(60);
/// How long opening a TCP connection may take.
pub const TCP_CONNECT: Duration = Duration::from_secs(2);

/// Runs when a connection the node tried to open could not be.
pub type OnFail = Box<dyn FnOnce() + Send>;

/// Messages for a connection being opened.
#[derive(Default)]
struct Opening {
    queue: Vec<Vec<u8>>,
    on_fail: Vec<OnFail>,
}

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
    opening: Mutex<HashMap<SocketAddr, Opening>>,
    next_id: AtomicU64,
    /// Where messages read from connections the node opened go (taken
    /// at shutdown: the dispatcher holds the sinks, which must close).
    dispatcher: Mutex<Option<Dispatcher>>,
    /// Those connections' tasks (aborted at shutdown).
    outbound: Mutex<tokio::task::JoinSet<()>>,
    message_timeout: Duration,
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
    stamp_arrivals(&sock);
    Ok((UdpSocket::from_std(sock)?, granted))
}

/// Asks the kernel for each datagram's arrival time and, once it has
/// dropped some on a full buffer, the socket's drop count.
fn stamp_arrivals(sock: &std::net::UdpSocket) {
    use nix::sys::socket::{setsockopt, sockopt};
    if let Err(e) = setsockopt(sock, sockopt::ReceiveTimestampns, &true) {
        warn!(cause = %e, "no kernel arrival stamps: time in the socket buffer is not seen as overload");
    }
    if let Err(e) = setsockopt(sock, sockopt::RxqOvfl, &1) {
        warn!(cause = %e, "no socket drop counter: dialmark_udp_receive_drops_total stays 0");
    }
}

/// A datagram read from the UDP socket.
struct Datagram {
    len: usize,
    from: SocketAddr,
    /// When the kernel queued it (unix ms); now when it gave no stamp.
    arrived_ms: u64,
    /// Datagrams the socket dropped so far (the kernel says once > 0).
    dropped: Option<u32>,
}

/// Reads one datagram with its ancillary data (non-blocking).
fn recv_stamped(
    fd: std::os::fd::RawFd,
    buf: &mut [u8],
    cmsg: &mut [u8],
) -> std::io::Result<Datagram> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, SockaddrLike, SockaddrStorage};
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let msg = recvmsg::<SockaddrStorage>(fd, &mut iov, Some(cmsg), MsgFlags::empty())?;
    let (mut arrived_ms, mut dropped) = (None, None);
    for c in msg.cmsgs()? {
        match c {
            ControlMessageOwned::ScmTimestampns(t) => {
                arrived_ms = Some(t.tv_sec() as u64 * 1_000 + t.tv_nsec() as u64 / 1_000_000);
            }
            ControlMessageOwned::RxqOvfl(n) => dropped = Some(n),
            _ => {}
        }
    }
    let from = msg.address.as_ref().and_then(|a| match a.family() {
        Some(nix::sys::socket::AddressFamily::Inet) => {
            a.as_sockaddr_in().map(|a| SocketAddr::V4((*a).into()))
        }
        Some(nix::sys::socket::AddressFamily::Inet6) => {
            a.as_sockaddr_in6().map(|a| SocketAddr::V6((*a).into()))
        }
        _ => None,
    });
    let from = from.ok_or_else(|| std::io::Error::other("datagram without an IP source"))?;
    Ok(Datagram {
        len: msg.bytes,
        from,
        arrived_ms: arrived_ms.unwrap_or_else(crate::now_ms),
        dropped,
    })
}

impl Transport {
    pub fn new(udp: Arc<UdpSocket>, message_timeout: Duration) -> Transport {
        Transport {
            udp,
            conns: Mutex::new(HashMap::new()),
            opening: Mutex::default(),
            next_id: AtomicU64::new(1),
            dispatcher: Mutex::default(),
            outbound: Mutex::default(),
            message_timeout,
        }
    }

    /// Where messages on connections the node opens go.
    pub fn set_dispatcher(&self, d: Dispatcher) {
        *self.dispatcher.lock().expect("dispatcher lock") = Some(d);
    }

    /// Closes the connections the node opened and lets go of the
    /// dispatcher (shutdown).
    pub fn close_outbound(&self) {
        self.dispatcher.lock().expect("dispatcher lock").take();
        self.outbound.lock().expect("outbound lock").abort_all();
    }

    /// Sends to a peer; when its TCP connection is gone, over a new one to
    /// `reopen` (where it listens) if given.
    pub fn send_or_reopen(self: &Arc<Self>, to: Peer, reopen: Option<SocketAddr>, bytes: Vec<u8>) {
        if to.tcp.is_some() && !self.has_conn(to.tcp) {
            if let Some(addr) = reopen {
                return self.send_tcp(addr, bytes, None);
            }
        }
        self.send(to, bytes);
    }

    fn has_conn(&self, id: Option<u64>) -> bool {
        id.is_some_and(|id| self.conns.lock().expect("conns lock").contains_key(&id))
    }

    /// Sends over TCP to `addr`: on an open connection with it (the node's
    /// or the peer's), else on a new one, the message queued until it is
    /// up. `on_fail` runs when the connection cannot be opened.
    pub fn send_tcp(self: &Arc<Self>, addr: SocketAddr, bytes: Vec<u8>, on_fail: Option<OnFail>) {
        let open = {
            let conns = self.conns.lock().expect("conns lock");
            conns
                .values()
                .find(|c| c.addr == addr)
                .map(|c| c.tx.clone())
        };
        if let Some(tx) = open {
            if tx.try_send(bytes).is_err() {
                debug!(to = %addr, "tcp connection busy or closing; message dropped");
            }
            return;
        }
        let mut opening = self.opening.lock().expect("opening lock");
        let first = !opening.contains_key(&addr);
        let o = opening.entry(addr).or_default();
        o.queue.push(bytes);
        o.on_fail.extend(on_fail);
        drop(opening);
        if first {
            let t = self.clone();
            self.outbound
                .lock()
                .expect("outbound lock")
                .spawn(async move { t.connect(addr).await });
        }
    }

    async fn connect(self: Arc<Self>, addr: SocketAddr) {
        let stream =
            match tokio::time::timeout(TCP_CONNECT, tokio::net::TcpStream::connect(addr)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return self.connect_failed(addr, &e.to_string()),
                Err(_) => return self.connect_failed(addr, "timeout"),
            };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel::<Vec<u8>>(256);
        self.open(id, addr, tx.clone());
        let queued = self
            .opening
            .lock()
            .expect("opening lock")
            .remove(&addr)
            .unwrap_or_default();
        for b in queued.queue {
            let _ = tx.send(b).await;
        }
        info!(to = %addr, "tcp connection opened");
        let d = self.dispatcher.lock().expect("dispatcher lock").clone();
        if let Some(d) = d {
            tcp_conn(stream, addr, id, (tx, rx), &d, self.message_timeout).await;
        }
        self.close(id);
    }

    fn connect_failed(&self, addr: SocketAddr, cause: &str) {
        warn!(to = %addr, cause, "tcp connection failed");
        metrics::counter!("dialmark_tcp_connect_failures_total").increment(1);
        let o = self
            .opening
            .lock()
            .expect("opening lock")
            .remove(&addr)
            .unwrap_or_default();
        for f in o.on_fail {
            f();
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
    use std::os::fd::AsRawFd;
    let mut buf = vec![0u8; 65_535];
    let mut cmsg = nix::cmsg_space!(nix::sys::time::TimeSpec, u32);
    let fd = t.udp.as_raw_fd();
    loop {
        let read = t
            .udp
            .async_io(tokio::io::Interest::READABLE, || {
                recv_stamped(fd, &mut buf, &mut cmsg)
            })
            .await;
        match read {
            Ok(g) => {
                if let Some(n) = g.dropped {
                    metrics::counter!("dialmark_udp_receive_drops_total").absolute(u64::from(n));
                }
                let n = g.len;
                if n == 0 || buf[..n].iter().all(|b| matches!(b, b'\r' | b'\n')) {
                    continue; // keep-alive
                }
                let from = Peer::udp(g.from);
                if !d.dispatch(buf[..n].to_vec(), from, g.arrived_ms).await {
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
        let id = t.next_id.fetch_add(1, Ordering::Relaxed);
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
                    if !d.dispatch(bytes, from, crate::now_ms()).await {
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
    metrics::counter!("dialmark_udp_receive_drops_total").absolute(0);
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
