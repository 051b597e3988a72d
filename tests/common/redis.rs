//! A real `redis-server` for tests: started on a free loopback port, killed and restarted
//! on the same port to test faults, spoken to with raw RESP.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::WAIT;

pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    extra: Vec<String>,
    /// The default user's password, for the test's own commands.
    password: Option<String>,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Redis {
    pub fn start() -> Redis {
        Redis::start_with(&[])
    }

    /// Starts redis-server with extra arguments (e.g. `--requirepass`).
    pub fn start_with(extra: &[&str]) -> Redis {
        let dir = std::env::temp_dir().join(format!(
            "volley-redis-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut redis = Redis {
            child: None,
            port: free_port(),
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            password: extra
                .windows(2)
                .find(|w| w[0] == "--requirepass")
                .map(|w| w[1].to_string()),
        };
        redis.restart();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// (Re)starts redis-server on the same port.
    pub fn restart(&mut self) {
        assert!(self.child.is_none());
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "redis-server is needed; tools/test.sh installs it (apt-get install redis-server)",
            );
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while self.try_command(&["PING"]).as_deref() != Some("+PONG") {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// One command over raw RESP; returns the reply's text with CRLFs as spaces.
    pub fn try_command(&self, args: &[&str]) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut wire = String::new();
        if let Some(password) = &self.password {
            wire.push_str(&format!(
                "*2\r\n$4\r\nAUTH\r\n${}\r\n{password}\r\n",
                password.len()
            ));
        }
        wire.push_str(&format!("*{}\r\n", args.len()));
        for arg in args {
            wire.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(wire.as_bytes()).ok()?;
        // Read until the expected number of replies is complete (ours to AUTH first).
        let replies = if self.password.is_some() { 2 } else { 1 };
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        while complete_replies(&raw) < replies {
            let n = stream.read(&mut buf).ok()?;
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&buf[..n]);
        }
        let mut text = String::from_utf8_lossy(&raw).into_owned();
        if self.password.is_some() {
            text = text.strip_prefix("+OK\r\n")?.to_string();
        }
        Some(text.trim_end().replace("\r\n", " "))
    }

    /// PUBSUB NUMSUB for one channel.
    pub fn numsub(&self, channel: &str) -> u64 {
        let reply = self.try_command(&["PUBSUB", "NUMSUB", channel]).unwrap();
        // "*2 $10 volley:all :N"
        reply.rsplit(':').next().unwrap().trim().parse().unwrap()
    }

    pub fn wait_numsub(&self, channel: &str, want: u64) {
        let deadline = Instant::now() + WAIT;
        loop {
            let got = self.numsub(channel);
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "PUBSUB NUMSUB {channel}: {got}, want {want}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// How many complete RESP2 replies `raw` holds (enough of a parser for these tests).
fn complete_replies(raw: &[u8]) -> usize {
    fn one(raw: &[u8], at: usize) -> Option<usize> {
        let line_end = raw[at..].windows(2).position(|w| w == b"\r\n")? + at;
        let line = std::str::from_utf8(&raw[at + 1..line_end]).ok()?;
        let next = line_end + 2;
        match raw.get(at)? {
            b'+' | b'-' | b':' => Some(next),
            b'$' => {
                let len: i64 = line.parse().ok()?;
                if len < 0 {
                    return Some(next);
                }
                let end = next + len as usize + 2;
                (raw.len() >= end).then_some(end)
            }
            b'*' => {
                let count: i64 = line.parse().ok()?;
                let mut at = next;
                for _ in 0..count.max(0) {
                    at = one(raw, at)?;
                }
                Some(at)
            }
            _ => None,
        }
    }
    let mut at = 0;
    let mut count = 0;
    while at < raw.len() {
        match one(raw, at) {
            Some(next) => {
                at = next;
                count += 1;
            }
            None => break,
        }
    }
    count
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
