//! A TCP proxy between volley and a real redis-server that injects faults on command:
//! pass bytes through, stall (hold every byte, keep the connections), cut (close every
//! connection, keep accepting), or blackhole (accept, never forward). A real part of the
//! test harness, not a mock: both ends are real sockets and the real server answers.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    Pass = 0,
    /// Bytes stop flowing both ways; connections stay open.
    Stall = 1,
    /// New connections are accepted and never forwarded.
    Blackhole = 2,
}

pub struct FaultProxy {
    pub port: u16,
    mode: Arc<AtomicU8>,
    /// Bumped by `cut`: pumps of older connections close them.
    generation: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

/// How often a pump looks at the mode while it waits for bytes.
const POLL: Duration = Duration::from_millis(20);

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `127.0.0.1:target_port`.
    pub fn start(target_port: u16) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let mode = Arc::new(AtomicU8::new(Mode::Pass as u8));
        let generation = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, g, s) = (mode.clone(), generation.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let blackhole = m.load(Ordering::Relaxed) == Mode::Blackhole as u8;
                        let upstream = if blackhole {
                            None
                        } else {
                            TcpStream::connect(("127.0.0.1", target_port)).ok()
                        };
                        let Some(upstream) = upstream else {
                            // Held open and silent (blackhole), or refused (no server).
                            if blackhole {
                                let s = s.clone();
                                std::thread::spawn(move || {
                                    while !s.load(Ordering::Relaxed) {
                                        std::thread::sleep(POLL);
                                    }
                                    drop(client);
                                });
                            }
                            continue;
                        };
                        let born = g.load(Ordering::Relaxed);
                        for (from, to) in [
                            (client.try_clone().unwrap(), upstream.try_clone().unwrap()),
                            (upstream, client),
                        ] {
                            let (m, g, s) = (m.clone(), g.clone(), s.clone());
                            std::thread::spawn(move || pump(from, to, &m, &g, born, &s));
                        }
                    }
                    Err(_) => std::thread::sleep(POLL),
                }
            }
        });
        FaultProxy {
            port,
            mode,
            generation,
            stop,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::Relaxed);
    }

    /// Closes every connection made so far (new ones are accepted as the mode says).
    pub fn cut(&self) {
        self.generation.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    mode: &AtomicU8,
    generation: &AtomicU64,
    born: u64,
    stop: &AtomicBool,
) {
    from.set_read_timeout(Some(POLL)).unwrap();
    let mut buf = [0u8; 16 * 1024];
    loop {
        if stop.load(Ordering::Relaxed) || generation.load(Ordering::Relaxed) != born {
            break;
        }
        if mode.load(Ordering::Relaxed) == Mode::Stall as u8 {
            std::thread::sleep(POLL);
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                // Bytes read just as a stall began are held until it ends, like the rest.
                while mode.load(Ordering::Relaxed) == Mode::Stall as u8
                    && generation.load(Ordering::Relaxed) == born
                    && !stop.load(Ordering::Relaxed)
                {
                    std::thread::sleep(POLL);
                }
                // A cut connection loses what it held, as a broken network would.
                if generation.load(Ordering::Relaxed) != born {
                    break;
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
