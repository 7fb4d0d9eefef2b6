//! The systemd notification protocol (`Type=notify`): `READY=1` once the
//! sources run, `WATCHDOG=1` at half of `WATCHDOG_USEC`, `STOPPING=1` when a
//! shutdown starts.
//!
//! The protocol is one datagram per message on the unix socket named by
//! `NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace). Without
//! that variable (not started by systemd) every call here does nothing.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// The shortest watchdog ping interval honoured: a `WATCHDOG_USEC` below
/// twice this is treated as this, so a typo cannot turn the pinger into a
/// busy loop.
const MIN_WATCHDOG_PING: Duration = Duration::from_millis(10);

/// A connection to the service manager, when there is one.
#[derive(Debug)]
pub(crate) struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
}

impl Notifier {
    /// The notifier systemd asked for through `NOTIFY_SOCKET`, or `None`
    /// when the variable is unset, empty or unusable (logged).
    pub(crate) fn from_env() -> Option<Notifier> {
        let name = std::env::var_os("NOTIFY_SOCKET").filter(|v| !v.is_empty())?;
        let addr = match socket_addr(name.as_encoded_bytes()) {
            Ok(a) => a,
            Err(error) => {
                tracing::warn!(socket = %name.to_string_lossy(), %error, "NOTIFY_SOCKET is not a usable unix socket address; not notifying systemd");
                return None;
            }
        };
        match UnixDatagram::unbound() {
            Ok(socket) => Some(Notifier { socket, addr }),
            Err(error) => {
                tracing::warn!(%error, "cannot create the systemd notification socket");
                None
            }
        }
    }

    /// Sends one state message (`READY=1`, `STOPPING=1`, …). Failures are
    /// logged, never fatal: the collector keeps collecting.
    pub(crate) fn notify(&self, state: &str) {
        if let Err(error) = self.socket.send_to_addr(state.as_bytes(), &self.addr) {
            tracing::warn!(state, %error, "cannot notify systemd");
        }
    }
}

/// `@name` is the abstract namespace; anything else a filesystem path.
fn socket_addr(name: &[u8]) -> std::io::Result<SocketAddr> {
    use std::os::unix::ffi::OsStrExt;
    match name.split_first() {
        Some((b'@', abstract_name)) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(abstract_name)
        }
        _ => SocketAddr::from_pathname(std::ffi::OsStr::from_bytes(name)),
    }
}

/// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, when the
/// watchdog is meant for this process (`WATCHDOG_PID` unset or ours).
pub(crate) fn watchdog_interval() -> Option<Duration> {
    parse_watchdog(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

fn parse_watchdog(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    if let Some(pid) = pid.filter(|p| !p.is_empty()) {
        if pid.trim().parse::<u32>().ok() != Some(me) {
            return None;
        }
    }
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    Some((Duration::from_micros(usec) / 2).max(MIN_WATCHDOG_PING))
}

/// The service-manager side of one run: tells systemd the pipeline is
/// ready, keeps its watchdog fed, and says when shutdown starts. Inert when
/// not started by systemd.
#[derive(Debug)]
pub(crate) struct ServiceManager {
    notifier: Option<std::sync::Arc<Notifier>>,
    watchdog: Option<tokio::task::JoinHandle<()>>,
}

impl ServiceManager {
    /// Sends `READY=1` and starts the watchdog pings. Call once every source
    /// has started, from within the runtime.
    pub(crate) fn ready() -> ServiceManager {
        let Some(notifier) = Notifier::from_env().map(std::sync::Arc::new) else {
            return ServiceManager {
                notifier: None,
                watchdog: None,
            };
        };
        notifier.notify("READY=1\nSTATUS=collecting");
        let watchdog = watchdog_interval().map(|every| {
            tracing::debug!(interval_ms = every.as_millis() as u64, "feeding the systemd watchdog");
            let n = notifier.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    n.notify("WATCHDOG=1");
                }
            })
        });
        ServiceManager {
            notifier: Some(notifier),
            watchdog,
        }
    }

    /// Sends `RELOADING=1` (with the monotonic time systemd asks for) as
    /// a reload starts, so `systemctl reload` waits for [`Self::reloaded`].
    pub(crate) fn reloading(&self) {
        if let Some(n) = &self.notifier {
            let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
            // SAFETY: clock_gettime writes into the timespec it is given.
            unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
            let usec = now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000;
            n.notify(&format!("RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS=reloading the config"));
        }
    }

    /// Sends `READY=1` once a reload is done (applied or refused).
    pub(crate) fn reloaded(&self) {
        if let Some(n) = &self.notifier {
            n.notify("READY=1\nSTATUS=collecting");
        }
    }

    /// Sends `STOPPING=1`. The watchdog keeps being fed while the queues
    /// drain (bounded by `shutdown_timeout`).
    pub(crate) fn stopping(&self) {
        if let Some(n) = &self.notifier {
            n.notify("STOPPING=1\nSTATUS=draining queues and flushing sinks");
        }
    }
}

impl Drop for ServiceManager {
    fn drop(&mut self) {
        if let Some(w) = self.watchdog.take() {
            w.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_pings_at_half_the_timeout_for_this_process_only() {
        assert_eq!(parse_watchdog(Some("2000000"), None, 7), Some(Duration::from_secs(1)));
        assert_eq!(parse_watchdog(Some("2000000"), Some("7"), 7), Some(Duration::from_secs(1)));
        assert_eq!(parse_watchdog(Some("2000000"), Some("8"), 7), None);
        assert_eq!(parse_watchdog(Some("0"), None, 7), None);
        assert_eq!(parse_watchdog(Some("soon"), None, 7), None);
        assert_eq!(parse_watchdog(None, None, 7), None);
        assert_eq!(parse_watchdog(Some("2"), None, 7), Some(MIN_WATCHDOG_PING));
    }

    #[test]
    fn abstract_and_path_addresses_reach_their_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier {
            socket: UnixDatagram::unbound().unwrap(),
            addr: socket_addr(path.as_os_str().as_encoded_bytes()).unwrap(),
        };
        n.notify("READY=1");
        let mut buf = [0u8; 64];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");

        let name = format!("@sluice-test-{}", std::process::id());
        let addr = socket_addr(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier {
            socket: UnixDatagram::unbound().unwrap(),
            addr,
        };
        n.notify("WATCHDOG=1");
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");
    }
}
