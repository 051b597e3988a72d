//! A minimal HTTP/1.1 client for `swarm publish`: one keep-alive connection, POST only,
//! Content-Length or chunked responses, hard limits on head and body size. The response
//! parsing is sans-IO (`parse_head`, `decode_chunked`) so it is tested without sockets.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::net::Target;

/// A response head larger than this is refused.
pub const HEAD_BYTES_MAX: usize = 16 * 1024;
/// A response body larger than this is refused.
pub const BODY_BYTES_MAX: usize = 1 << 20;

#[derive(Debug, PartialEq, Eq)]
pub enum BodyLength {
    Exact(usize),
    Chunked,
    /// No length given: the body runs until the server closes.
    UntilClose,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    pub head_len: usize,
    pub body: BodyLength,
    pub keep_alive: bool,
}

/// `Ok(None)` while the head is incomplete; `Err` if it is malformed or too large.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, String> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > HEAD_BYTES_MAX {
            return Err(format!("response head larger than {HEAD_BYTES_MAX} bytes"));
        }
        return Ok(None);
    };
    let text =
        std::str::from_utf8(&buf[..end]).map_err(|_| "response head is not UTF-8".to_owned())?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP/1.x response: {status_line:?}"));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line: {status_line:?}"))?;
    let mut body = BodyLength::UntilClose;
    let mut keep_alive = version == "HTTP/1.1";
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("bad header line: {line:?}"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n = value
                .parse::<usize>()
                .map_err(|_| format!("bad Content-Length: {value:?}"))?;
            body = BodyLength::Exact(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            && value.to_ascii_lowercase().contains("chunked")
        {
            body = BodyLength::Chunked;
        } else if name.eq_ignore_ascii_case("connection") {
            keep_alive = !value.eq_ignore_ascii_case("close");
        }
    }
    if status == 204 || status == 304 || (100..200).contains(&status) {
        body = BodyLength::Exact(0);
    }
    if let BodyLength::Exact(n) = body {
        if n > BODY_BYTES_MAX {
            return Err(format!(
                "response body of {n} bytes is larger than {BODY_BYTES_MAX}"
            ));
        }
    }
    if body == BodyLength::UntilClose {
        keep_alive = false;
    }
    Ok(Some(Head {
        status,
        head_len: end + 4,
        body,
        keep_alive,
    }))
}

/// Decodes a chunked body. `Ok(None)` while incomplete; returns (body, bytes consumed).
pub fn decode_chunked(buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, String> {
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let Some(line_end) = buf[pos..].windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&buf[pos..pos + line_end])
            .map_err(|_| "bad chunk size line".to_owned())?;
        let size_hex = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| format!("bad chunk size {size_hex:?}"))?;
        pos += line_end + 2;
        if size == 0 {
            // Trailers are not expected; take the final CRLF.
            if buf.len() < pos + 2 {
                return Ok(None);
            }
            return Ok(Some((out, pos + 2)));
        }
        if out.len() + size > BODY_BYTES_MAX {
            return Err(format!("chunked body larger than {BODY_BYTES_MAX} bytes"));
        }
        if buf.len() < pos + size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&buf[pos..pos + size]);
        pos += size + 2;
    }
}

pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// One keep-alive connection, opened on demand and dropped after any error.
pub struct Client {
    target: Target,
    stream: Option<TcpStream>,
    /// Extra request headers (e.g. the publisher's `X-API-Key`).
    headers: Vec<(String, String)>,
}

impl Client {
    pub fn new(target: Target) -> Self {
        Self {
            target,
            stream: None,
            headers: Vec::new(),
        }
    }

    /// Adds a header to every request.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// `path` is appended to the target's path prefix (without doubling the slash).
    pub async fn post(
        &mut self,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> Result<Response, String> {
        let result = self.post_once(path, content_type, body).await;
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    async fn post_once(
        &mut self,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> Result<Response, String> {
        let stream = match &mut self.stream {
            Some(s) => s,
            None => {
                let s = TcpStream::connect(self.target.addr)
                    .await
                    .map_err(|e| format!("connect {}: {e}", self.target.addr))?;
                s.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
                self.stream.insert(s)
            }
        };
        let full_path = format!("{}{}", self.target.path.trim_end_matches('/'), path);
        let mut extra = String::new();
        for (name, value) in &self.headers {
            extra.push_str(&format!("{name}: {value}\r\n"));
        }
        let mut request = format!(
            "POST {full_path} HTTP/1.1\r\nHost: {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}\r\n",
            self.target.authority,
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        stream
            .write_all(&request)
            .await
            .map_err(|e| format!("write: {e}"))?;

        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 4096];
        let head = loop {
            if let Some(head) = parse_head(&buf)? {
                break head;
            }
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("server closed the connection before answering".into());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let mut rest = buf.split_off(head.head_len);
        let body = match head.body {
            BodyLength::Exact(n) => {
                while rest.len() < n {
                    let got = stream
                        .read(&mut chunk)
                        .await
                        .map_err(|e| format!("read body: {e}"))?;
                    if got == 0 {
                        return Err("server closed the connection mid-body".into());
                    }
                    rest.extend_from_slice(&chunk[..got]);
                }
                rest.truncate(n);
                rest
            }
            BodyLength::Chunked => loop {
                if let Some((body, _)) = decode_chunked(&rest)? {
                    break body;
                }
                let got = stream
                    .read(&mut chunk)
                    .await
                    .map_err(|e| format!("read body: {e}"))?;
                if got == 0 {
                    return Err("server closed the connection mid-body".into());
                }
                rest.extend_from_slice(&chunk[..got]);
            },
            BodyLength::UntilClose => {
                loop {
                    let got = stream
                        .read(&mut chunk)
                        .await
                        .map_err(|e| format!("read body: {e}"))?;
                    if got == 0 {
                        break;
                    }
                    if rest.len() + got > BODY_BYTES_MAX {
                        return Err(format!("response body larger than {BODY_BYTES_MAX} bytes"));
                    }
                    rest.extend_from_slice(&chunk[..got]);
                }
                rest
            }
        };
        if !head.keep_alive {
            self.stream = None;
        }
        Ok(Response {
            status: head.status,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_incomplete_then_complete() {
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Len").unwrap(), None);
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 17\r\ncontent-type: application/json\r\n\r\n{\"recipients\": 3}";
        let h = parse_head(raw).unwrap().unwrap();
        assert_eq!(h.status, 200);
        assert_eq!(h.body, BodyLength::Exact(17));
        assert!(h.keep_alive);
        assert_eq!(&raw[h.head_len..], b"{\"recipients\": 3}");
    }

    #[test]
    fn head_variants() {
        let h = parse_head(b"HTTP/1.1 503 Busy\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.status, 503);
        assert!(!h.keep_alive);
        let h = parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.body, BodyLength::Chunked);
        let h = parse_head(b"HTTP/1.0 200 OK\r\n\r\n").unwrap().unwrap();
        assert_eq!(h.body, BodyLength::UntilClose);
        assert!(!h.keep_alive);
    }

    #[test]
    fn head_errors() {
        assert!(parse_head(b"SMTP 200\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 abc\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nbroken\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n").is_err());
        assert!(parse_head(&vec![b'a'; HEAD_BYTES_MAX + 1]).is_err());
    }

    #[test]
    fn chunked() {
        assert_eq!(decode_chunked(b"5\r\nhel").unwrap(), None);
        let raw = b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n";
        let (body, used) = decode_chunked(raw).unwrap().unwrap();
        assert_eq!(body, b"hello world");
        assert_eq!(used, raw.len());
        assert!(decode_chunked(b"zz\r\n").is_err());
    }
}
