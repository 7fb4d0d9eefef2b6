//! Unix sockets: the socket file (mode, owner, safe replacement of a stale
//! one) and the stream accept loop with peer credentials.

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::peer::{process_details, unix_peer_metadata, PeerCredentials};
use super::{accept_or_stop, Conn, Connections, Reader, SocketConfig, SocketError};
use crate::enrich::SourceContext;
use crate::sources::{SourceCx, SourceError};

/// `sun_path` holds 108 bytes including the terminating NUL.
pub(crate) const MAX_PATH_BYTES: usize = 108;

/// Mode and owner of a socket file.
#[derive(Debug, Clone)]
pub(crate) struct FileSettings {
    pub(crate) permissions: u32,
    pub(crate) owner: Option<String>,
    pub(crate) group: Option<String>,
}

/// The socket file this source created. Removed when dropped, unless
/// another process has replaced it since.
#[derive(Debug)]
pub(crate) struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if m.dev() == self.dev && m.ino() == self.ino {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Stream,
    Datagram,
}

/// Binds a unix stream listener at `path`.
pub(crate) fn bind_stream(path: &Path, settings: &FileSettings) -> Result<(tokio::net::UnixListener, SocketFile), SocketError> {
    let (listener, file) = bind_file(path, settings, Kind::Stream, |tmp| std::os::unix::net::UnixListener::bind(tmp))?;
    listener.set_nonblocking(true).map_err(|error| bind_error(path, error))?;
    let listener = tokio::net::UnixListener::from_std(listener).map_err(|error| bind_error(path, error))?;
    Ok((listener, file))
}

/// Binds a unix datagram socket at `path`, with SO_PASSCRED so every
/// datagram carries its sender's credentials.
pub(crate) fn bind_datagram(
    path: &Path,
    settings: &FileSettings,
    receive_buffer: Option<crate::config::ByteSize>,
) -> Result<(tokio::net::UnixDatagram, SocketFile), SocketError> {
    let (socket, file) = bind_file(path, settings, Kind::Datagram, |tmp| std::os::unix::net::UnixDatagram::bind(tmp))?;
    let fd = socket.as_raw_fd();
    super::datagram::set_int_option(fd, libc::SOL_SOCKET, libc::SO_PASSCRED, 1).map_err(|error| bind_error(path, error))?;
    if let Some(size) = receive_buffer {
        super::datagram::set_int_option(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, size.0.min(i32::MAX as u64) as i32)
            .map_err(|error| bind_error(path, error))?;
    }
    socket.set_nonblocking(true).map_err(|error| bind_error(path, error))?;
    let socket = tokio::net::UnixDatagram::from_std(socket).map_err(|error| bind_error(path, error))?;
    Ok((socket, file))
}

fn bind_error(path: &Path, error: std::io::Error) -> SocketError {
    SocketError::Bind {
        target: path.display().to_string(),
        error,
    }
}

/// Binds at a private temporary name next to `path`, sets mode and owner,
/// then renames it over `path`: the socket is never reachable with the
/// wrong permissions, and a stale file is replaced atomically. A file at
/// `path` is replaced only if it is a socket that nobody listens on.
fn bind_file<T>(
    path: &Path,
    settings: &FileSettings,
    kind: Kind,
    bind: impl FnOnce(&Path) -> std::io::Result<T>,
) -> Result<(T, SocketFile), SocketError> {
    let shown = path.display().to_string();
    check_existing(path, kind)?;
    let file_name = path
        .file_name()
        .ok_or_else(|| bind_error(path, std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name")))?;
    let tmp = path.with_file_name(format!(".{}.{}.tmp", file_name.to_string_lossy(), std::process::id()));
    if tmp.as_os_str().len() >= MAX_PATH_BYTES {
        return Err(bind_error(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "path too long for a unix socket"),
        ));
    }
    // A leftover of a crashed run with the same pid; only ever a socket.
    if std::fs::symlink_metadata(&tmp).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(&tmp);
    }
    let socket = bind(&tmp).map_err(|error| bind_error(path, error))?;
    let cleanup = |e: SocketError| {
        let _ = std::fs::remove_file(&tmp);
        e
    };
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(settings.permissions)).map_err(|e| {
        cleanup(SocketError::FileSettings {
            what: "mode",
            path: shown.clone(),
            error: e.to_string(),
        })
    })?;
    if settings.owner.is_some() || settings.group.is_some() {
        let uid = settings.owner.as_deref().map(resolve_user).transpose();
        let gid = settings.group.as_deref().map(resolve_group).transpose();
        let (uid, gid) = match (uid, gid) {
            (Ok(u), Ok(g)) => (u, g),
            (Err(error), _) | (_, Err(error)) => {
                return Err(cleanup(SocketError::FileSettings {
                    what: "owner",
                    path: shown.clone(),
                    error,
                }))
            }
        };
        std::os::unix::fs::chown(&tmp, uid, gid).map_err(|e| {
            cleanup(SocketError::FileSettings {
                what: "owner",
                path: shown.clone(),
                error: e.to_string(),
            })
        })?;
    }
    std::fs::rename(&tmp, path).map_err(|error| cleanup(bind_error(path, error)))?;
    let meta = std::fs::symlink_metadata(path).map_err(|error| bind_error(path, error))?;
    Ok((
        socket,
        SocketFile {
            path: path.to_owned(),
            dev: meta.dev(),
            ino: meta.ino(),
        },
    ))
}

/// Refuses to replace anything but a stale socket (one that refuses
/// connections).
fn check_existing(path: &Path, kind: Kind) -> Result<(), SocketError> {
    let shown = path.display().to_string();
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(bind_error(path, error)),
    };
    if !meta.file_type().is_socket() {
        return Err(SocketError::NotASocket(shown));
    }
    let probe = match kind {
        Kind::Stream => std::os::unix::net::UnixStream::connect(path).map(drop),
        Kind::Datagram => std::os::unix::net::UnixDatagram::unbound().and_then(|s| s.connect(path)),
    };
    match probe {
        Ok(()) => Err(SocketError::InUse(shown)),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            tracing::info!(path = %shown, "replacing a stale socket file from a previous run");
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        // A socket of the other type is listening there (EPROTOTYPE), or
        // it cannot be probed: leave it alone.
        Err(e) if e.raw_os_error() == Some(libc::EPROTOTYPE) => Err(SocketError::InUse(shown)),
        Err(error) => Err(bind_error(path, error)),
    }
}

/// A user name or numeric uid.
fn resolve_user(name: &str) -> Result<u32, String> {
    if let Ok(uid) = name.parse() {
        return Ok(uid);
    }
    let c = CString::new(name).map_err(|_| format!("invalid user name {name:?}"))?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: zeroed passwd is a valid out-parameter; the buffer outlives
    // the call and its length is passed.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    let rc = unsafe { libc::getpwnam_r(c.as_ptr(), &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
    if rc != 0 || result.is_null() {
        return Err(format!("no user named {name:?}"));
    }
    Ok(pwd.pw_uid)
}

/// A group name or numeric gid.
fn resolve_group(name: &str) -> Result<u32, String> {
    if let Ok(gid) = name.parse() {
        return Ok(gid);
    }
    let c = CString::new(name).map_err(|_| format!("invalid group name {name:?}"))?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: as in resolve_user.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::group = std::ptr::null_mut();
    let rc = unsafe { libc::getgrnam_r(c.as_ptr(), &mut grp, buf.as_mut_ptr(), buf.len(), &mut result) };
    if rc != 0 || result.is_null() {
        return Err(format!("no group named {name:?}"));
    }
    Ok(grp.gr_gid)
}

/// Accepts unix stream connections until shutdown; each gets its peer's
/// metadata rendered once, then is read until it ends.
pub(crate) async fn run_stream(
    listener: tokio::net::UnixListener,
    file: SocketFile,
    cfg: SocketConfig,
    reader: Arc<Reader>,
    cx: SourceCx,
) -> Result<(), SourceError> {
    let mut shutdown = cx.shutdown.clone();
    let mut conns = Connections::new(cx.name.clone(), cfg.max_connections);
    let environment: Arc<[String]> = cfg.peer_environment.clone().into();
    tracing::info!(source = %cx.name, path = %file.path.display(), "listening on a unix stream socket");
    while let Some(accepted) = accept_or_stop(listener.accept(), &mut shutdown, &cx.name).await {
        let Some((stream, _)) = accepted else { continue };
        let Some(slot) = conns.admit() else {
            drop(stream);
            continue;
        };
        let reader = reader.clone();
        let enrich = cx.enrich.clone();
        let environment = environment.clone();
        let name = cx.name.clone();
        let shutdown = cx.shutdown.clone();
        let peer_metadata = cfg.peer_metadata;
        let path = file.path.display().to_string();
        conns.spawn(async move {
            let _slot = slot;
            let cred = stream.peer_cred().ok().map(|c| PeerCredentials {
                pid: c.pid().and_then(|p| u32::try_from(p).ok()).filter(|p| *p > 0),
                uid: c.uid(),
                gid: c.gid(),
            });
            let meta = if peer_metadata {
                let describe = move || {
                    let details = cred.and_then(|c| c.pid).map(|pid| process_details(pid, &environment));
                    unix_peer_metadata(&enrich, cred, details.as_ref())
                };
                match tokio::task::spawn_blocking(describe).await {
                    Ok(m) => m,
                    Err(_) => return,
                }
            } else {
                enrich.metadata(None)
            };
            let stream_id = match cred.and_then(|c| c.pid) {
                Some(pid) => format!("{path} pid {pid}"),
                None => path,
            };
            let ctx = Arc::new(SourceContext::new(name, "socket", stream_id, meta));
            reader.serve(Conn::Unix(stream), ctx, shutdown).await;
        });
    }
    drop(listener);
    conns.join_all().await;
    drop(file);
    Ok(())
}
