//! tls-cost: what native TLS (rustls) would cost volley per connection, measured without
//! sockets. It completes N server-side rustls sessions in memory (a rustls client on the
//! other end, bytes pumped between the two), plays the WebSocket upgrade through each (a
//! request in, a 101 out), drops the client and keeps the server session, as a volley
//! shard would keep one per connection. Then it prints, per held session:
//!   - live heap bytes (a counting global allocator: exact, whatever the allocator keeps),
//!   - RSS delta (what the process really grew by, mimalloc as in volley),
//!   - the same after every session read one small client message and sealed one 100-byte
//!     broadcast (the buffers rustls keeps once they were used),
//!   - the CPU time of sealing one broadcast per session (with TLS, "encode once" stops at
//!     the record layer: each connection encrypts the frame under its own keys),
//!   - live heap per session at two earlier stages (1,000 sessions each): just created,
//!     and right after the handshake, before any application data.
//!
//! Usage: tls-cost --cert CERT.pem --key KEY.pem [--sessions 10000] [--tls12]
//!                 [--message-bytes 100]
//! tools/bench-tls.sh makes the certificate (ECDSA P-256, as tests/proxies.rs) and runs it.
//! Output: one JSON object on stdout.

use std::alloc::{GlobalAlloc, Layout};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

/// mimalloc, as volley uses, wrapped to count the bytes live on the heap.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);
static INNER: mimalloc::MiMalloc = mimalloc::MiMalloc;

// SAFETY: every call is forwarded unchanged to mimalloc, which upholds GlobalAlloc's
// contract; the counter only observes sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        INNER.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        INNER.dealloc(ptr, layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        INNER.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        INNER.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live_bytes() -> isize {
    LIVE_BYTES.load(Ordering::Relaxed)
}

/// Resident set size of this process, in bytes (/proc/self/statm, pages).
fn rss_bytes() -> isize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: isize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    pages * unsafe { libc_page_size() }
}

extern "C" {
    fn sysconf(name: i32) -> i64;
}

/// _SC_PAGESIZE is 30 on Linux (x86_64 and aarch64).
unsafe fn libc_page_size() -> isize {
    sysconf(30) as isize
}

struct Args {
    cert: String,
    key: String,
    sessions: usize,
    tls12: bool,
    message_bytes: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        cert: String::new(),
        key: String::new(),
        sessions: 10_000,
        tls12: false,
        message_bytes: 100,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--cert" => args.cert = value()?,
            "--key" => args.key = value()?,
            "--sessions" => {
                args.sessions = value()?.parse().map_err(|e| format!("--sessions: {e}"))?
            }
            "--message-bytes" => {
                args.message_bytes = value()?
                    .parse()
                    .map_err(|e| format!("--message-bytes: {e}"))?
            }
            "--tls12" => args.tls12 = true,
            other => {
                return Err(format!(
                    "unknown flag {other}; see the usage at the top of main.rs"
                ))
            }
        }
    }
    if args.cert.is_empty() || args.key.is_empty() {
        return Err("--cert and --key are required (PEM files)".into());
    }
    if args.sessions == 0 || args.sessions > 1_000_000 {
        return Err(format!("--sessions {}: must be 1..=1000000", args.sessions));
    }
    Ok(args)
}

fn configs(args: &Args) -> Result<(Arc<ServerConfig>, Arc<ClientConfig>), String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&args.cert)
        .map_err(|e| format!("{}: {e}", args.cert))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", args.cert))?;
    let key = PrivateKeyDer::from_pem_file(&args.key).map_err(|e| format!("{}: {e}", args.key))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if args.tls12 {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs.clone(), key)
        .map_err(|e| e.to_string())?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| e.to_string())?;
    }
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Every connection a full handshake: this measures held sessions, not resumption.
    client.resumption = rustls::client::Resumption::disabled();
    Ok((Arc::new(server), Arc::new(client)))
}

/// Moves every pending TLS byte from `from` to `to` until neither has anything to send.
fn pump(client: &mut ClientConnection, server: &mut ServerConnection) -> Result<(), String> {
    let mut wire = Vec::with_capacity(4096);
    loop {
        let mut moved = false;
        while client.wants_write() {
            wire.clear();
            client.write_tls(&mut wire).map_err(|e| e.to_string())?;
            let mut slice = &wire[..];
            while !slice.is_empty() {
                server.read_tls(&mut slice).map_err(|e| e.to_string())?;
                server.process_new_packets().map_err(|e| e.to_string())?;
            }
            moved = true;
        }
        while server.wants_write() {
            wire.clear();
            server.write_tls(&mut wire).map_err(|e| e.to_string())?;
            let mut slice = &wire[..];
            while !slice.is_empty() {
                client.read_tls(&mut slice).map_err(|e| e.to_string())?;
                client.process_new_packets().map_err(|e| e.to_string())?;
            }
            moved = true;
        }
        if !moved {
            return Ok(());
        }
    }
}

const UPGRADE: &[u8] = b"GET /ws?user=u1 HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
const SWITCHING: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";

/// One completed session with the upgrade played through it; also returns the ciphertext
/// of one small client message, for the server to read later without its client.
fn session(
    server_config: &Arc<ServerConfig>,
    client_config: &Arc<ClientConfig>,
    scratch: &mut [u8],
) -> Result<(ServerConnection, Vec<u8>), String> {
    let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let mut client =
        ClientConnection::new(client_config.clone(), name).map_err(|e| e.to_string())?;
    let mut server = ServerConnection::new(server_config.clone()).map_err(|e| e.to_string())?;
    pump(&mut client, &mut server)?;
    if client.is_handshaking() || server.is_handshaking() {
        return Err("the handshake did not complete".into());
    }
    client
        .writer()
        .write_all(UPGRADE)
        .map_err(|e| e.to_string())?;
    pump(&mut client, &mut server)?;
    let n = server.reader().read(scratch).map_err(|e| e.to_string())?;
    if n != UPGRADE.len() {
        return Err(format!("read {n} of the upgrade's {} bytes", UPGRADE.len()));
    }
    server
        .writer()
        .write_all(SWITCHING)
        .map_err(|e| e.to_string())?;
    pump(&mut client, &mut server)?;
    let n = client.reader().read(scratch).map_err(|e| e.to_string())?;
    if n != SWITCHING.len() {
        return Err(format!("read {n} of the 101's {} bytes", SWITCHING.len()));
    }
    // A masked WebSocket text frame of 20 bytes from the client, sealed now, read later.
    client
        .writer()
        .write_all(&[
            0x81, 0x94, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ])
        .map_err(|e| e.to_string())?;
    let mut sealed = Vec::new();
    client.write_tls(&mut sealed).map_err(|e| e.to_string())?;
    sealed.shrink_to_fit();
    Ok((server, sealed))
}

/// Live heap bytes per server session (the struct included) at two earlier stages, over
/// STAGE_SESSIONS sessions each: just created (no byte exchanged), and right after the
/// handshake, before any application data.
fn stages(
    server_config: &Arc<ServerConfig>,
    client_config: &Arc<ClientConfig>,
) -> Result<(f64, f64), String> {
    const STAGE_SESSIONS: usize = 1000;
    let struct_bytes = std::mem::size_of::<ServerConnection>() as f64;
    let mut held = Vec::with_capacity(STAGE_SESSIONS);
    let live0 = live_bytes();
    for _ in 0..STAGE_SESSIONS {
        held.push(ServerConnection::new(server_config.clone()).map_err(|e| e.to_string())?);
    }
    let fresh = (live_bytes() - live0) as f64 / STAGE_SESSIONS as f64 + struct_bytes;
    held.clear();
    let live0 = live_bytes();
    for _ in 0..STAGE_SESSIONS {
        let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
        let mut client =
            ClientConnection::new(client_config.clone(), name).map_err(|e| e.to_string())?;
        let mut server = ServerConnection::new(server_config.clone()).map_err(|e| e.to_string())?;
        pump(&mut client, &mut server)?;
        held.push(server);
    }
    let handshaken = (live_bytes() - live0) as f64 / STAGE_SESSIONS as f64 + struct_bytes;
    Ok((fresh, handshaken))
}

fn run(args: &Args) -> Result<String, String> {
    let (server_config, client_config) = configs(args)?;
    let mut scratch = vec![0u8; 64 * 1024];
    // Warm-up: lazy statics, the allocator's first pages, the session cache's growth.
    for _ in 0..300 {
        drop(session(&server_config, &client_config, &mut scratch)?);
    }
    let (probe, _) = session(&server_config, &client_config, &mut scratch)?;
    let suite = probe
        .negotiated_cipher_suite()
        .map(|s| format!("{:?}", s.suite()))
        .unwrap_or_default();
    let version = probe
        .protocol_version()
        .map(|v| format!("{v:?}"))
        .unwrap_or_default();
    drop(probe);

    let (fresh, handshaken) = stages(&server_config, &client_config)?;

    let n = args.sessions;
    let mut sessions: Vec<ServerConnection> = Vec::with_capacity(n);
    let mut sealed: Vec<Vec<u8>> = Vec::with_capacity(n);
    let (live0, rss0) = (live_bytes(), rss_bytes());
    let started = Instant::now();
    for _ in 0..n {
        let (server, message) = session(&server_config, &client_config, &mut scratch)?;
        sessions.push(server);
        sealed.push(message);
    }
    let handshakes_s = started.elapsed().as_secs_f64();
    // Both vectors were allocated before live0 was read: the heap count misses the session
    // structs themselves (added back below), while RSS sees every page they touched. The
    // pending client messages belong to the measurement, not to the sessions: both figures
    // leave them (and their slots) out.
    let struct_bytes = std::mem::size_of::<ServerConnection>() as isize;
    let sealed_bytes: isize = sealed.iter().map(|m| m.capacity() as isize).sum();
    let sealed_slots = (n * std::mem::size_of::<Vec<u8>>()) as isize;
    let (live1, rss1) = (live_bytes(), rss_bytes());
    let n_i = n as isize;
    let idle_live = (live1 - live0 - sealed_bytes + struct_bytes * n_i) as f64 / n as f64;
    let idle_rss = (rss1 - rss0 - sealed_bytes - sealed_slots) as f64 / n as f64;

    // Each session reads its client's message (rustls buffers the record, then the
    // plaintext), then seals one broadcast; the ciphertext goes to one shared buffer, as
    // a shard would send it.
    for (server, message) in sessions.iter_mut().zip(sealed.drain(..)) {
        let mut slice = &message[..];
        while !slice.is_empty() {
            server.read_tls(&mut slice).map_err(|e| e.to_string())?;
            server.process_new_packets().map_err(|e| e.to_string())?;
        }
        let got = server
            .reader()
            .read(&mut scratch)
            .map_err(|e| e.to_string())?;
        if got != 26 {
            return Err(format!("read {got} of the client message's 26 bytes"));
        }
    }
    drop(sealed);
    let frame = vec![b'x'; args.message_bytes];
    let mut wire = Vec::with_capacity(64 * 1024);
    let sealing = Instant::now();
    for server in sessions.iter_mut() {
        server
            .writer()
            .write_all(&frame)
            .map_err(|e| e.to_string())?;
        wire.clear();
        server.write_tls(&mut wire).map_err(|e| e.to_string())?;
    }
    let seal_ns = sealing.elapsed().as_nanos() as f64 / n as f64;
    let record_bytes = wire.len();
    let (live2, rss2) = (live_bytes(), rss_bytes());
    let used_live = (live2 - live0 + struct_bytes * n_i) as f64 / n as f64;
    // The freed client messages' pages may stay resident (mimalloc reuses them): left out.
    let used_rss = (rss2 - rss0 - sealed_bytes - sealed_slots) as f64 / n as f64;
    let out = format!(
        concat!(
            "{{\"sessions\":{},\"version\":\"{}\",\"suite\":\"{}\",",
            "\"server_connection_struct_bytes\":{},",
            "\"fresh_live_heap_bytes_per_session\":{:.0},\"handshaken_live_heap_bytes_per_session\":{:.0},",
            "\"idle_live_heap_bytes_per_session\":{:.0},\"idle_rss_bytes_per_session\":{:.0},",
            "\"used_live_heap_bytes_per_session\":{:.0},\"used_rss_bytes_per_session\":{:.0},",
            "\"seal_ns_per_session\":{:.0},\"message_bytes\":{},\"record_bytes\":{},",
            "\"handshakes_per_s\":{:.0}}}"
        ),
        n,
        version,
        suite,
        struct_bytes,
        fresh,
        handshaken,
        idle_live,
        idle_rss,
        used_live,
        used_rss,
        seal_ns,
        args.message_bytes,
        record_bytes,
        n as f64 / handshakes_s,
    );
    drop(sessions);
    Ok(out)
}

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("tls-cost: {e}");
            std::process::exit(2);
        }
    };
    match run(&args) {
        Ok(json) => println!("{json}"),
        Err(e) => {
            eprintln!("tls-cost: {e}");
            std::process::exit(1);
        }
    }
}
