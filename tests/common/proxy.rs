//! haproxy and nginx for tests: the recipes in deploy/ run as they are, with only addresses,
//! ports and file paths substituted (haproxy from its environment, nginx by replacing its
//! `${NAME}` placeholders, as deploy/README.md tells a host to do with envsubst). Each proxy
//! is a foreground child of the test on 127.0.0.1 free ports, with its pid, logs and state
//! in the test's own directory, stopped by PID; the system's services are never touched.
//! Clients speak wss:// and https:// with a certificate made here by the openssl CLI.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tungstenite::stream::MaybeTlsStream;
use tungstenite::Connector;

use super::redis::free_port;
use super::{Client, WAIT};

/// The path of a tool the proxy tests need; fails the test, loudly, when it is not
/// installed: these tests must not pass by doing nothing. Debian puts haproxy and nginx in
/// /usr/sbin, which a non-login PATH may lack.
pub fn require(tool: &str) -> PathBuf {
    let runs = |path: &Path| {
        Command::new(path)
            .arg("-v")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    };
    [PathBuf::from(tool), Path::new("/usr/sbin").join(tool)]
        .into_iter()
        .find(|path| runs(path))
        .unwrap_or_else(|| {
            panic!(
                "`{tool}` is not installed: run tools/test.sh, which installs haproxy, nginx, \
                 openssl and redis-server from Debian when they are missing (or apt-get install \
                 {tool})"
            )
        })
}

/// A directory for one test's files, removed at the end.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(what: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "volley-{what}-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A self-signed certificate for `localhost` and 127.0.0.1, made by the openssl CLI.
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Certificate then key in one file, as haproxy's `crt` takes them.
    pub pem: PathBuf,
    connector: native_tls::TlsConnector,
}

impl Tls {
    pub fn make(dir: &Path) -> Tls {
        let openssl = require("openssl");
        let (cert, key, pem) = (
            dir.join("cert.pem"),
            dir.join("key.pem"),
            dir.join("haproxy.pem"),
        );
        let output = Command::new(openssl)
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
            .args(["-subj", "/CN=localhost"])
            .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "openssl req: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let cert_pem = std::fs::read(&cert).unwrap();
        let mut both = cert_pem.clone();
        both.extend(std::fs::read(&key).unwrap());
        std::fs::write(&pem, both).unwrap();
        // Trust this certificate only: the clients verify the chain and the name, as a browser
        // would, rather than turning verification off.
        let connector = native_tls::TlsConnector::builder()
            .add_root_certificate(native_tls::Certificate::from_pem(&cert_pem).unwrap())
            .disable_built_in_roots(true)
            .build()
            .unwrap();
        Tls {
            cert,
            key,
            pem,
            connector,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    Haproxy,
    Nginx,
}

impl Kind {
    pub fn binary(self) -> &'static str {
        match self {
            Kind::Haproxy => "haproxy",
            Kind::Nginx => "nginx",
        }
    }
}

/// One HTTP response: status, headers (names lowercased), body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

pub struct Proxy {
    child: Child,
    pub kind: Kind,
    /// wss:// and https://.
    pub tls_addr: SocketAddr,
    /// http://, which only redirects.
    pub http_addr: SocketAddr,
    /// The volley processes behind it, in the recipe's order (v1, v2).
    pub backends: [SocketAddr; 2],
    /// haproxy's runtime API socket.
    pub admin_socket: PathBuf,
    log: PathBuf,
    connector: native_tls::TlsConnector,
}

impl Proxy {
    /// Starts the deploy/ recipe of `kind` in front of `backends` and waits until it serves
    /// `/healthz` over https.
    pub fn start(kind: Kind, backends: [SocketAddr; 2], dir: &Path, tls: &Tls) -> Proxy {
        let binary = require(kind.binary());
        let tls_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let http_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = dir.join(format!("{}.log", kind.binary()));
        let admin_socket = dir.join("haproxy-admin.sock");
        let recipe = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("deploy")
            .join(match kind {
                Kind::Haproxy => "haproxy.cfg",
                Kind::Nginx => "nginx.conf",
            });
        let mut command = match kind {
            Kind::Haproxy => {
                let mut command = Command::new(&binary);
                // -db: foreground, no daemon. -n: this box's hard fd limit is far below the
                // ~262k fds the recipe's maxconn 131072 needs, and haproxy (strict-limits)
                // refuses to start without them; -n lowers only maxconn, the file stays as is.
                command.args(["-db", "-n", "4000", "-f"]).arg(&recipe);
                command
                    .env("VOLLEY_TLS_BIND", tls_addr.to_string())
                    .env("VOLLEY_HTTP_BIND", http_addr.to_string())
                    .env("VOLLEY_TLS_PEM", &tls.pem)
                    .env("VOLLEY_BACKEND_1", backends[0].to_string())
                    .env("VOLLEY_BACKEND_2", backends[1].to_string())
                    .env("HAPROXY_ADMIN_SOCKET", &admin_socket);
                command
            }
            Kind::Nginx => {
                let (logs, state) = (dir.join("nginx-logs"), dir.join("nginx-state"));
                std::fs::create_dir_all(&logs).unwrap();
                std::fs::create_dir_all(&state).unwrap();
                let text = std::fs::read_to_string(&recipe).unwrap();
                let text = substitute(
                    &text,
                    &[
                        ("VOLLEY_TLS_BIND", tls_addr.to_string()),
                        ("VOLLEY_HTTP_BIND", http_addr.to_string()),
                        ("VOLLEY_TLS_CERT", tls.cert.display().to_string()),
                        ("VOLLEY_TLS_KEY", tls.key.display().to_string()),
                        ("VOLLEY_BACKEND_1", backends[0].to_string()),
                        ("VOLLEY_BACKEND_2", backends[1].to_string()),
                        (
                            "NGINX_PID_FILE",
                            dir.join("nginx.pid").display().to_string(),
                        ),
                        ("NGINX_LOG_DIR", logs.display().to_string()),
                        ("NGINX_STATE_DIR", state.display().to_string()),
                    ],
                );
                let conf = dir.join("nginx.conf");
                std::fs::write(&conf, text).unwrap();
                let mut command = Command::new(&binary);
                // -p: relative paths resolve here, not under the system prefix; -e: the log
                // for errors before the config is read; master in the foreground.
                command
                    .arg("-p")
                    .arg(dir)
                    .arg("-c")
                    .arg(&conf)
                    .arg("-e")
                    .arg(&log)
                    .args(["-g", "daemon off;"]);
                command
            }
        };
        let out = std::fs::File::create(dir.join(format!("{}.out", kind.binary()))).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let mut proxy = Proxy {
            child,
            kind,
            tls_addr,
            http_addr,
            backends,
            admin_socket,
            log: if kind == Kind::Haproxy {
                dir.join("haproxy.out")
            } else {
                log
            },
            connector: tls.connector.clone(),
        };
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = proxy.child.try_wait().unwrap() {
                panic!(
                    "{} exited at start ({status}): {}",
                    kind.binary(),
                    proxy.logs()
                );
            }
            if let Ok(r) = proxy.try_https(None, "GET", "/healthz", b"", &[]) {
                if r.status == 200 {
                    return proxy;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{} never served /healthz: {}",
                kind.binary(),
                proxy.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// What the proxy wrote, for failure messages.
    pub fn logs(&self) -> String {
        let mut text = std::fs::read_to_string(&self.log).unwrap_or_default();
        if self.kind == Kind::Nginx {
            let dir = self.log.parent().unwrap();
            text += &std::fs::read_to_string(dir.join("nginx-logs/error.log")).unwrap_or_default();
        }
        text
    }

    /// Which backend (0 or 1) the `X-Volley-Backend` header the recipe adds names: haproxy
    /// gives the server name (v1, v2), nginx the address it used last (after any retries).
    pub fn backend_of(&self, header: &str) -> usize {
        let last = header.rsplit(',').next().unwrap_or("").trim();
        match (self.kind, last) {
            (Kind::Haproxy, "v1") => 0,
            (Kind::Haproxy, "v2") => 1,
            (Kind::Nginx, addr) if addr.parse() == Ok(self.backends[0]) => 0,
            (Kind::Nginx, addr) if addr.parse() == Ok(self.backends[1]) => 1,
            _ => panic!("X-Volley-Backend {header:?} names no backend of {self:?}"),
        }
    }

    /// A TCP connection to `to`, from `source` (any 127.x.y.z: the whole /8 is loopback, so
    /// tests can be many clients with different addresses) or the default address.
    fn tcp(to: SocketAddr, source: Option<Ipv4Addr>) -> std::io::Result<TcpStream> {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        if let Some(ip) = source {
            socket.bind(&SocketAddr::new(IpAddr::V4(ip), 0).into())?;
        }
        socket.connect_timeout(&to.into(), WAIT)?;
        let stream: TcpStream = socket.into();
        stream.set_read_timeout(Some(WAIT))?;
        stream.set_write_timeout(Some(WAIT))?;
        Ok(stream)
    }

    /// One https request (`Connection: close`) from `source`, with extra headers.
    pub fn try_https(
        &self,
        source: Option<Ipv4Addr>,
        method: &str,
        path: &str,
        body: &[u8],
        headers: &[(&str, &str)],
    ) -> std::io::Result<Response> {
        let tcp = Proxy::tcp(self.tls_addr, source)?;
        let mut tls = self
            .connector
            .connect("localhost", tcp)
            .map_err(std::io::Error::other)?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost:{}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.tls_addr.port(),
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        tls.write_all(head.as_bytes())?;
        tls.write_all(body)?;
        let mut raw = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match tls.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
                // A peer that closes without close_notify ends the answer too.
                Err(_) if !raw.is_empty() => break,
                Err(e) => return Err(e),
            }
        }
        parse(&raw).ok_or_else(|| std::io::Error::other(format!("bad response: {:?}", raw.len())))
    }

    pub fn https(
        &self,
        source: Option<Ipv4Addr>,
        method: &str,
        path: &str,
        body: &[u8],
        headers: &[(&str, &str)],
    ) -> Response {
        self.try_https(source, method, path, body, headers)
            .unwrap_or_else(|e| panic!("{method} {path} through {:?}: {e}", self.kind))
    }

    /// A plain http:// request to the redirecting listener.
    pub fn http(&self, path: &str) -> Response {
        let mut tcp = Proxy::tcp(self.http_addr, None).unwrap();
        let head = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        tcp.write_all(head.as_bytes()).unwrap();
        parse(&super::read_to_close(&mut tcp)).unwrap()
    }

    /// A wss:// client of the native protocol on `/ws?<query>`; returns it and the backend
    /// (0 or 1) that took it, or why the upgrade failed.
    pub fn try_wss(&self, query: &str) -> Result<(Client, usize), String> {
        let tcp = Proxy::tcp(self.tls_addr, None).map_err(|e| e.to_string())?;
        let url = format!("wss://localhost:{}/ws?{query}", self.tls_addr.port());
        match tungstenite::client_tls_with_config(
            url,
            tcp,
            None,
            Some(Connector::NativeTls(self.connector.clone())),
        ) {
            Ok((client, response)) => {
                let header = response
                    .headers()
                    .get("x-volley-backend")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_else(|| panic!("no X-Volley-Backend on the 101: {response:?}"));
                let backend = self.backend_of(header);
                assert!(matches!(client.get_ref(), MaybeTlsStream::NativeTls(_)));
                Ok((client, backend))
            }
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
                Err(format!(
                    "{} {}",
                    response.status().as_u16(),
                    String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
                ))
            }
            Err(e) => Err(e.to_string()),
        }
    }

    pub fn wss(&self, query: &str) -> (Client, usize) {
        self.try_wss(query)
            .unwrap_or_else(|e| panic!("wss ?{query} through {:?}: {e}", self.kind))
    }

    /// haproxy's runtime API: `show stat` as (proxy, server, status) rows.
    pub fn haproxy_servers(&self) -> Vec<(String, String, String)> {
        assert_eq!(self.kind, Kind::Haproxy);
        let mut socket = std::os::unix::net::UnixStream::connect(&self.admin_socket).unwrap();
        socket.set_read_timeout(Some(WAIT)).unwrap();
        socket.write_all(b"show stat\n").unwrap();
        let mut csv = String::new();
        socket.read_to_string(&mut csv).unwrap();
        let mut lines = csv.lines();
        let names: Vec<&str> = lines
            .next()
            .and_then(|h| h.strip_prefix("# "))
            .unwrap_or_else(|| panic!("show stat: {csv}"))
            .split(',')
            .collect();
        let column = |name: &str| names.iter().position(|n| *n == name).unwrap();
        let (px, sv, status) = (column("pxname"), column("svname"), column("status"));
        lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let fields: Vec<&str> = l.split(',').collect();
                (
                    fields[px].to_string(),
                    fields[sv].to_string(),
                    fields[status].to_string(),
                )
            })
            .collect()
    }

    /// Stops the proxy by its PID (SIGTERM: haproxy and nginx both stop at once) and waits.
    pub fn stop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        // SAFETY: kill(2) on the PID of a child this test started and has not reaped.
        unsafe {
            libc::kill(self.pid(), libc::SIGTERM);
        }
        let deadline = Instant::now() + WAIT;
        while self.child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} pid {} on {}", self.kind, self.pid(), self.tls_addr)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Replaces each `${NAME}` of `vars` in `text`, as `envsubst '$NAME ...'` does on a host,
/// and checks that no `${...}` is left outside comments: nginx's own variables are written
/// without braces.
pub fn substitute(text: &str, vars: &[(&str, String)]) -> String {
    let mut out = text.to_string();
    for (name, value) in vars {
        out = out.replace(&format!("${{{name}}}"), value);
    }
    let left = out
        .lines()
        .find(|l| !l.trim_start().starts_with('#') && l.contains("${"));
    assert!(
        left.is_none(),
        "a placeholder the test does not set: {left:?}"
    );
    out
}

/// Status, headers and body of one HTTP/1.1 response (Content-Length framed, or up to the
/// end of the connection).
fn parse(raw: &[u8]) -> Option<Response> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.lines();
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some(Response {
        status,
        headers,
        body: body.to_string(),
    })
}
