//! TCP (plain or TLS) and UDP listeners.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use super::datagram::set_int_option;
use super::metrics::socket_metrics;
use super::peer::ip_peer_metadata;
use super::{accept_or_stop, Conn, Connections, Reader, SocketError};
use crate::config::ByteSize;
use crate::enrich::SourceContext;
use crate::sources::{SourceCx, SourceError};

/// Listen backlog: room for a burst of reconnecting senders while the
/// accept loop catches up.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds a TCP listener (SO_REUSEADDR, so a restart does not wait for
/// TIME_WAIT).
pub(crate) fn bind_tcp(addr: SocketAddr) -> Result<tokio::net::TcpListener, SocketError> {
    let error = |error| SocketError::Bind {
        target: addr.to_string(),
        error,
    };
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(error)?;
    socket.set_reuseaddr(true).map_err(error)?;
    socket.bind(addr).map_err(error)?;
    socket.listen(LISTEN_BACKLOG).map_err(error)
}

/// Binds a UDP socket, with SO_RXQ_OVFL so the kernel reports what it
/// dropped when the receive buffer overflowed.
pub(crate) fn bind_udp(addr: SocketAddr, receive_buffer: Option<ByteSize>) -> Result<tokio::net::UdpSocket, SocketError> {
    let error = |error| SocketError::Bind {
        target: addr.to_string(),
        error,
    };
    let socket = std::net::UdpSocket::bind(addr).map_err(error)?;
    let fd = socket.as_raw_fd();
    if let Some(size) = receive_buffer {
        set_int_option(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, size.0.min(i32::MAX as u64) as i32).map_err(error)?;
    }
    set_int_option(fd, libc::SOL_SOCKET, libc::SO_RXQ_OVFL, 1).map_err(error)?;
    socket.set_nonblocking(true).map_err(error)?;
    tokio::net::UdpSocket::from_std(socket).map_err(error)
}

/// Accepts TCP connections until shutdown. Past `max_connections` a
/// connection is closed at once (the client reads end-of-stream) and
/// counted; TLS handshakes run in the connection's task, bounded by
/// `handshake_timeout`.
pub(crate) async fn run_tcp(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    handshake_timeout: Duration,
    reader: Arc<Reader>,
    max_connections: usize,
    cx: SourceCx,
) -> Result<(), SourceError> {
    let mut shutdown = cx.shutdown.clone();
    let mut conns = Connections::new(cx.name.clone(), max_connections);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(source = %cx.name, address = %addr, tls = tls.is_some(), "listening on TCP");
    }
    while let Some(accepted) = accept_or_stop(listener.accept(), &mut shutdown, &cx.name).await {
        let Some((stream, peer)) = accepted else { continue };
        let Some(slot) = conns.admit() else {
            drop(stream);
            continue;
        };
        let reader = reader.clone();
        let meta = ip_peer_metadata(&cx.enrich, Some(peer.ip()));
        let ctx = Arc::new(SourceContext::new(cx.name.clone(), "socket", peer.to_string(), meta));
        let shutdown = cx.shutdown.clone();
        let tls = tls.clone();
        let name = cx.name.clone();
        conns.spawn(async move {
            let _slot = slot;
            let conn = match tls {
                None => Conn::Tcp(stream),
                Some(acceptor) => match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => Conn::Tls(Box::new(s)),
                    Ok(Err(error)) => {
                        socket_metrics().refused.with_label_values(&[&name, "tls"]).inc();
                        tracing::warn!(source = %name, %peer, %error, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        socket_metrics().refused.with_label_values(&[&name, "tls"]).inc();
                        tracing::warn!(source = %name, %peer, "TLS handshake timed out");
                        return;
                    }
                },
            };
            reader.serve(conn, ctx, shutdown).await;
        });
    }
    drop(listener);
    conns.join_all().await;
    Ok(())
}
