//! Datagram sockets (unix datagram, UDP). A receive task reads what one
//! wake-up brings, grouped by sender, and hands it to a forward task
//! through a small queue; it reads only once that queue has room. While
//! the pipeline is full nothing is read, so a burst waits in the kernel's
//! receive buffer (`receive_buffer_bytes`) instead of being dropped here.
//! Past that buffer a unix datagram sender is held back by the kernel, and
//! UDP datagrams are dropped by the kernel, which says how many
//! (SO_RXQ_OVFL); they are counted as `socket_overflow`.

use bytes::BytesMut;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::Interest;
use tokio::sync::mpsc;

use super::peer::{ip_peer_metadata, process_details, unix_peer_metadata, PeerCredentials};
use super::unix::SocketFile;
use super::{Reader, SocketConfig, SocketFormat};
use crate::enrich::SourceContext;
use crate::framing::{split_lines, LineSpan, Lines, OverflowPolicy};
use crate::sources::{SourceCx, SourceError, SourceErrorKind};
use crate::telemetry::metrics;

/// Bytes gathered from one wake-up before they are handed on: one batch.
const BURST_BYTES: usize = 256 * 1024;

/// Distinct senders in one burst before it is handed on early.
const BURST_GROUPS: usize = 64;

/// Bursts read ahead of the pipeline (one more is in the forward task).
/// Small: a datagram that the pipeline cannot take yet is better left in
/// the kernel's receive buffer, which the operator sizes, than held here.
const QUEUE_BURSTS: usize = 2;

/// Largest UDP payload.
const UDP_RECEIVE_BYTES: usize = 65_536;

/// Largest unix datagram read whole; the kernel's default send buffer
/// caps a unix datagram a little above 200 KiB.
const UNIX_RECEIVE_BYTES: usize = 256 * 1024;

/// How long a sender's rendered metadata is reused before `/proc` is read
/// again (a pid can be reused by another process).
const CONTEXT_TTL: Duration = Duration::from_secs(60);

/// Senders whose metadata is cached; past it the cache starts over.
const CONTEXT_CACHE_ENTRIES: usize = 4096;

/// A bound datagram socket.
pub(crate) enum DatagramSocket {
    /// A unix datagram socket with SO_PASSCRED.
    Unix(tokio::net::UnixDatagram),
    /// A UDP socket with SO_RXQ_OVFL.
    Udp(tokio::net::UdpSocket),
}

impl DatagramSocket {
    async fn readable(&self) -> std::io::Result<()> {
        match self {
            DatagramSocket::Unix(s) => s.readable().await,
            DatagramSocket::Udp(s) => s.readable().await,
        }
    }

    fn try_recv(&self, buf: &mut BytesMut, cap: usize) -> std::io::Result<Received> {
        match self {
            DatagramSocket::Unix(s) => s.try_io(Interest::READABLE, || recv_into(s.as_raw_fd(), buf, cap)),
            DatagramSocket::Udp(s) => s.try_io(Interest::READABLE, || recv_into(s.as_raw_fd(), buf, cap)),
        }
    }

    fn receive_bytes(&self) -> usize {
        match self {
            DatagramSocket::Unix(_) => UNIX_RECEIVE_BYTES,
            DatagramSocket::Udp(_) => UDP_RECEIVE_BYTES,
        }
    }
}

/// Who sent a datagram, as far as the kernel says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum PeerKey {
    Unknown,
    Process(PeerCredentials),
    Ip(IpAddr),
}

/// One received datagram.
struct Received {
    /// Bytes stored in the buffer.
    stored: usize,
    /// The datagram's real length (more than `stored` when it was cut).
    full: usize,
    peer: PeerKey,
    /// The kernel's running count of datagrams dropped on this socket.
    overflow: Option<u32>,
}

/// Sets an integer socket option.
pub(crate) fn set_int_option(fd: RawFd, level: libc::c_int, name: libc::c_int, value: i32) -> std::io::Result<()> {
    // SAFETY: the option value is a valid c_int for the call's duration.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// recvmsg(2) into the spare capacity of `buf` (at most `cap` bytes), with
/// the sender's address and credentials and the drop counter.
fn recv_into(fd: RawFd, buf: &mut BytesMut, cap: usize) -> std::io::Result<Received> {
    let spare = buf.spare_capacity_mut();
    let cap = cap.min(spare.len());
    let mut iov = libc::iovec {
        iov_base: spare.as_mut_ptr().cast(),
        iov_len: cap,
    };
    // u64 elements keep the control buffer aligned for cmsghdr.
    let mut control = [0u64; 16];
    // SAFETY: all-zero is a valid sockaddr_storage and msghdr.
    let mut name: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: msg points at live buffers of the stated sizes; MSG_TRUNC
    // makes the kernel return the datagram's real length without writing
    // past `cap`.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_TRUNC | libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let full = n as usize;
    let stored = full.min(cap);
    // SAFETY: the kernel initialised the first `stored` bytes of the spare
    // capacity.
    unsafe { buf.set_len(buf.len() + stored) };
    let mut cred = None;
    let mut overflow = None;
    // SAFETY: the CMSG macros walk the control buffer the kernel filled,
    // within msg_controllen; payloads are read unaligned.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            let h = &*c;
            let len = h.cmsg_len as usize;
            if h.cmsg_level == libc::SOL_SOCKET {
                if h.cmsg_type == libc::SCM_CREDENTIALS && len >= libc::CMSG_LEN(std::mem::size_of::<libc::ucred>() as u32) as usize {
                    let u: libc::ucred = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                    cred = Some(PeerCredentials {
                        pid: u32::try_from(u.pid).ok().filter(|p| *p > 0),
                        uid: u.uid,
                        gid: u.gid,
                    });
                } else if h.cmsg_type == libc::SO_RXQ_OVFL && len >= libc::CMSG_LEN(4) as usize {
                    overflow = Some(std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<u32>()));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    let peer = match (cred, sender_ip(&name)) {
        (Some(c), _) => PeerKey::Process(c),
        (None, Some(ip)) => PeerKey::Ip(ip),
        (None, None) => PeerKey::Unknown,
    };
    Ok(Received {
        stored,
        full,
        peer,
        overflow,
    })
}

fn sender_ip(name: &libc::sockaddr_storage) -> Option<IpAddr> {
    match i32::from(name.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a: libc::sockaddr_in = unsafe { std::ptr::read_unaligned((name as *const libc::sockaddr_storage).cast()) };
            Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a: libc::sockaddr_in6 = unsafe { std::ptr::read_unaligned((name as *const libc::sockaddr_storage).cast()) };
            Some(IpAddr::V6(Ipv6Addr::from(a.sin6_addr.s6_addr)))
        }
        _ => None,
    }
}

/// What one wake-up brought: the bytes, and per sender the spans of its
/// messages in them.
struct Burst {
    buf: BytesMut,
    groups: Vec<(PeerKey, Vec<LineSpan>, u64)>,
    format: SocketFormat,
    max_frame: usize,
    oversize: OverflowPolicy,
}

impl Burst {
    /// Takes what the burst gathered, one batch per sender, leaving it
    /// empty for the next wake-up.
    fn take(&mut self) -> Vec<PeerBatch> {
        if self.groups.is_empty() {
            self.buf.clear();
            return Vec::new();
        }
        let chunk = self.buf.split().freeze();
        self.groups
            .drain(..)
            .map(|(peer, spans, dropped)| PeerBatch {
                peer,
                lines: Lines {
                    chunk: chunk.clone(),
                    spans,
                    dropped,
                    may_hold_breaks: true,
                },
            })
            .collect()
    }

    /// Records the datagram just stored at `buf[start..]`.
    fn add(&mut self, start: usize, r: &Received) {
        let g = match self.groups.iter().position(|(p, _, _)| *p == r.peer) {
            Some(g) => g,
            None => {
                self.groups.push((r.peer, Vec::new(), 0));
                self.groups.len() - 1
            }
        };
        let cut = r.full > r.stored;
        let (spans, dropped) = {
            let (_, spans, dropped) = &mut self.groups[g];
            (spans, dropped)
        };
        let before = spans.len();
        match self.format {
            // One message per datagram: syslog never spans or shares one.
            SocketFormat::Syslog => push_span(spans, dropped, start, r.stored, cut, self.max_frame, self.oversize),
            SocketFormat::Json => {
                let data = &self.buf[start..start + r.stored];
                let mut local = Vec::new();
                let tail = split_lines(data, &mut local);
                for s in local {
                    push_span(
                        spans,
                        dropped,
                        start + s.start as usize,
                        s.len as usize,
                        false,
                        self.max_frame,
                        self.oversize,
                    );
                }
                if tail < r.stored {
                    push_span(spans, dropped, start + tail, r.stored - tail, cut, self.max_frame, self.oversize);
                }
            }
        }
        // A datagram that left nothing (dropped whole) gives its bytes back.
        if spans.len() == before {
            self.buf.truncate(start);
        }
    }

    fn is_full(&self) -> bool {
        self.buf.len() >= BURST_BYTES || self.groups.len() >= BURST_GROUPS
    }
}

fn push_span(spans: &mut Vec<LineSpan>, dropped: &mut u64, start: usize, len: usize, cut: bool, max: usize, policy: OverflowPolicy) {
    if len <= max && !cut {
        spans.push(LineSpan {
            start: start as u32,
            len: len as u32,
            truncated: false,
        });
        return;
    }
    match policy {
        OverflowPolicy::Truncate => spans.push(LineSpan {
            start: start as u32,
            len: len.min(max) as u32,
            truncated: true,
        }),
        OverflowPolicy::Drop => *dropped += 1,
    }
}

/// A sender's messages from one burst.
struct PeerBatch {
    peer: PeerKey,
    lines: Lines,
}

/// Runs a datagram source until shutdown.
pub(crate) async fn run(
    socket: DatagramSocket,
    file: Option<SocketFile>,
    cfg: SocketConfig,
    reader: Arc<Reader>,
    cx: SourceCx,
) -> Result<(), SourceError> {
    let (tx, rx) = mpsc::channel(QUEUE_BURSTS);
    let forwarder = tokio::spawn(forward(rx, reader, cfg.clone(), cx.clone()));
    match &socket {
        DatagramSocket::Udp(s) => match s.local_addr() {
            Ok(address) => tracing::info!(source = %cx.name, %address, "receiving datagrams"),
            Err(_) => tracing::info!(source = %cx.name, "receiving datagrams"),
        },
        DatagramSocket::Unix(_) => match &cfg.path {
            Some(path) => tracing::info!(source = %cx.name, path = %path.display(), "receiving datagrams"),
            None => tracing::info!(source = %cx.name, "receiving datagrams"),
        },
    }
    let result = receive(&socket, &cfg, &cx, tx).await;
    let _ = forwarder.await;
    drop(socket);
    drop(file);
    result
}

async fn receive(socket: &DatagramSocket, cfg: &SocketConfig, cx: &SourceCx, tx: mpsc::Sender<Vec<PeerBatch>>) -> Result<(), SourceError> {
    let mut shutdown = cx.shutdown.clone();
    let overflow = metrics().events_dropped.with_label_values(&[&cx.name, "socket_overflow"]);
    let cap = socket.receive_bytes();
    let mut burst = Burst {
        buf: BytesMut::new(),
        groups: Vec::new(),
        format: cfg.format,
        max_frame: cfg.max_frame_bytes.0 as usize,
        oversize: cfg.oversize,
    };
    // The socket is new, so the kernel's drop count starts at zero; it is
    // attached to a datagram only once it is non-zero.
    let mut kernel_drops: u32 = 0;
    loop {
        // Room for the next burst first: while the pipeline is full this
        // waits, and datagrams wait in the kernel's buffer.
        let permit = tokio::select! {
            biased;
            _ = shutdown.wait() => break,
            p = tx.reserve() => match p {
                Ok(p) => p,
                Err(_) => return Ok(()),
            },
        };
        tokio::select! {
            biased;
            _ = shutdown.wait() => break,
            r = socket.readable() => if let Err(error) = r {
                return Err(SourceError::new(&cx.name, SourceErrorKind::Io { action: "wait on the socket", error }));
            },
        }
        loop {
            if burst.buf.capacity() - burst.buf.len() < cap {
                burst.buf.reserve(BURST_BYTES.max(cap));
            }
            let start = burst.buf.len();
            match socket.try_recv(&mut burst.buf, cap) {
                Ok(r) => {
                    if let Some(count) = r.overflow {
                        overflow.inc_by(u64::from(count.wrapping_sub(kernel_drops)));
                        kernel_drops = count;
                    }
                    burst.add(start, &r);
                    if burst.is_full() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(error) => {
                    // ICMP errors surface here on UDP; the socket lives on.
                    tracing::debug!(source = %cx.name, %error, "receive failed");
                    break;
                }
            }
        }
        let batches = burst.take();
        if !batches.is_empty() {
            permit.send(batches);
        }
    }
    Ok(())
}

/// Takes batches from the receive task to the pipeline, waiting as long as
/// the pipeline needs; renders each sender's metadata once (per minute).
async fn forward(mut rx: mpsc::Receiver<Vec<PeerBatch>>, reader: Arc<Reader>, cfg: SocketConfig, cx: SourceCx) {
    let mut cache: HashMap<PeerKey, (Arc<SourceContext>, Instant)> = HashMap::new();
    let environment: Arc<[String]> = cfg.peer_environment.clone().into();
    let where_ = cfg
        .path
        .as_ref()
        .map(|p| p.display().to_string())
        .or_else(|| cfg.address.map(|a| a.to_string()))
        .unwrap_or_default();
    while let Some(burst) = rx.recv().await {
        for batch in burst {
            let fresh = cache
                .get(&batch.peer)
                .filter(|(_, at)| at.elapsed() < CONTEXT_TTL)
                .map(|(c, _)| c.clone());
            let ctx = match fresh {
                Some(c) => c,
                None => {
                    if cache.len() >= CONTEXT_CACHE_ENTRIES {
                        cache.clear();
                    }
                    let c = Arc::new(context_for(batch.peer, &cfg, &cx, &environment, &where_).await);
                    cache.insert(batch.peer, (c.clone(), Instant::now()));
                    c
                }
            };
            if reader.send(batch.lines, &ctx).await.is_err() {
                return;
            }
        }
    }
}

async fn context_for(peer: PeerKey, cfg: &SocketConfig, cx: &SourceCx, environment: &Arc<[String]>, where_: &str) -> SourceContext {
    let (meta, stream) = match peer {
        PeerKey::Ip(ip) => (ip_peer_metadata(&cx.enrich, Some(ip)), ip.to_canonical().to_string()),
        PeerKey::Process(cred) if cfg.peer_metadata => {
            let enrich = cx.enrich.clone();
            let environment = environment.clone();
            let describe = move || {
                let details = cred.pid.map(|pid| process_details(pid, &environment));
                unix_peer_metadata(&enrich, Some(cred), details.as_ref())
            };
            let meta = tokio::task::spawn_blocking(describe)
                .await
                .unwrap_or_else(|_| cx.enrich.metadata(None));
            let stream = match cred.pid {
                Some(pid) => format!("{where_} pid {pid}"),
                None => where_.to_owned(),
            };
            (meta, stream)
        }
        PeerKey::Process(_) | PeerKey::Unknown => (cx.enrich.metadata(None), where_.to_owned()),
    };
    SourceContext::new(cx.name.clone(), "socket", stream, meta)
}
