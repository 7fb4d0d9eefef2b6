//! Certificates made at test time with `openssl req`, and a TLS endpoint
//! (`socat openssl-listen`) in front of a plaintext loopback service, with
//! client certificates required when a client CA is given.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, wait_until};

/// Runs `cmd` to its end; panics with its output if it fails.
pub fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A certificate authority in a directory: `ca.pem` and its key.
pub struct Ca {
    /// The CA certificate (PEM).
    pub cert: PathBuf,
    key: PathBuf,
    dir: PathBuf,
    name: String,
}

impl Ca {
    /// A new self-signed CA named `name`, its files in `dir`.
    pub fn new(dir: &Path, name: &str) -> Ca {
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        run(Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj"])
            .arg(format!("/CN={name}"))
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert));
        Ca {
            cert,
            key,
            dir: dir.to_owned(),
            name: name.to_owned(),
        }
    }

    /// A certificate for `cn` with subject alternative names `san`
    /// (`DNS:localhost,IP:127.0.0.1`), valid `days` days, signed by this CA:
    /// (certificate, key), PEM, in the CA's directory.
    pub fn issue(&self, cn: &str, san: &str, days: u32) -> (PathBuf, PathBuf) {
        let base = self.dir.join(format!("{}-{cn}-{days}", self.name));
        let (cert, key, csr, ext) = (
            base.with_extension("pem"),
            base.with_extension("key"),
            base.with_extension("csr"),
            base.with_extension("cnf"),
        );
        run(Command::new("openssl")
            .args(["req", "-newkey", "rsa:2048", "-nodes", "-subj"])
            .arg(format!("/CN={cn}"))
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&csr));
        std::fs::write(&ext, format!("subjectAltName={san}\n")).unwrap();
        run(Command::new("openssl")
            .args(["x509", "-req", "-days", &days.to_string(), "-in"])
            .arg(&csr)
            .arg("-CA")
            .arg(&self.cert)
            .arg("-CAkey")
            .arg(&self.key)
            .arg("-CAcreateserial")
            .arg("-extfile")
            .arg(&ext)
            .arg("-out")
            .arg(&cert));
        (cert, key)
    }
}

/// When the first certificate of a PEM file expires, in Unix seconds, as
/// `openssl x509 -enddate` and `date` read it.
pub fn not_after(cert: &Path) -> i64 {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-enddate", "-in"])
        .arg(cert)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let date = text.trim().strip_prefix("notAfter=").expect("notAfter=");
    let out = Command::new("date").args(["-u", "-d", date, "+%s"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// `socat openssl-listen` on a loopback port, forwarding each connection
/// to a plaintext one; killed on drop.
pub struct TlsProxy {
    /// The TLS port.
    pub port: u16,
    child: Child,
}

impl TlsProxy {
    /// Serves `cert`/`key` on a free port in front of `127.0.0.1:target`;
    /// with `client_ca`, only clients with a certificate it signed get
    /// through. socat's log goes to `log`.
    pub fn start(cert: &Path, key: &Path, client_ca: Option<&Path>, target: u16, log: &Path) -> TlsProxy {
        TlsProxy::start_on(free_port(), cert, key, client_ca, target, log)
    }

    /// [`TlsProxy::start`] on a given port (a broker must advertise it
    /// before the proxy starts).
    pub fn start_on(port: u16, cert: &Path, key: &Path, client_ca: Option<&Path>, target: u16, log: &Path) -> TlsProxy {
        let verify = match client_ca {
            Some(ca) => format!("verify=1,cafile={}", ca.display()),
            None => "verify=0".to_owned(),
        };
        let child = Command::new("socat")
            .arg(format!(
                "openssl-listen:{port},bind=127.0.0.1,reuseaddr,fork,cert={},key={},{verify}",
                cert.display(),
                key.display()
            ))
            .arg(format!("tcp:127.0.0.1:{target}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("start socat");
        wait_until("the TLS endpoint", Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok().map(drop)
        });
        TlsProxy { port, child }
    }
}

impl TlsProxy {
    /// `tls_proxy.py` (Python's ssl) in front of `127.0.0.1:target`,
    /// offering the ALPN protocols `alpn` (`h2` for gRPC, which socat
    /// cannot negotiate); with `client_ca`, client certificates required.
    pub fn start_alpn(cert: &Path, key: &Path, client_ca: Option<&Path>, target: u16, alpn: &str, log: &Path) -> TlsProxy {
        use std::io::BufRead;
        let mut cmd = Command::new("python3");
        cmd.arg(super::support_dir().join("tls_proxy.py"))
            .arg("--cert")
            .arg(cert)
            .arg("--key")
            .arg(key)
            .args(["--target", &target.to_string(), "--alpn", alpn]);
        if let Some(ca) = client_ca {
            cmd.arg("--client-ca").arg(ca);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("start tls_proxy.py");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped stdout");
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        let port = line
            .trim()
            .strip_prefix("ready port=")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "tls_proxy.py printed {line:?}: {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                )
            });
        TlsProxy { port, child }
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
