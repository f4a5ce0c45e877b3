//! Just enough HTTP/1.1 for the stand-in API server: request and response
//! heads read off a socket by hand, so that an upgrade request can be passed
//! on byte for byte, and what follows a head (already the upgraded
//! protocol) is never lost.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The most a head may take (kubectl's are well under 2 KiB).
const MAX_HEAD: usize = 64 << 10;

/// A request or response head: its first line and its header lines as
/// received (names keep their case, repeated headers stay separate).
#[derive(Debug, Clone)]
pub struct Head {
    /// `GET /api/v1/... HTTP/1.1`, or `HTTP/1.1 101 Switching Protocols`.
    pub first: String,
    /// (name, value) in order.
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// A request's method.
    pub fn method(&self) -> &str {
        self.first.split(' ').next().unwrap_or("")
    }

    /// A request's target (path and query).
    pub fn target(&self) -> &str {
        self.first.split(' ').nth(1).unwrap_or("")
    }

    /// The path of a request's target.
    pub fn path(&self) -> &str {
        let t = self.target();
        t.split_once('?').map_or(t, |(p, _)| p)
    }

    /// A request's query, decoded, in order (repeated keys stay separate).
    pub fn query(&self) -> Vec<(String, String)> {
        let Some((_, q)) = self.target().split_once('?') else {
            return Vec::new();
        };
        q.split('&')
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (unescape(k), unescape(v))
            })
            .collect()
    }

    /// A response's status code.
    pub fn status(&self) -> u16 {
        self.first
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every comma-separated value of header `name`, over all its lines.
    pub fn header_values(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .collect()
    }

    /// The same request for `path` on `host`: the request line and the
    /// `Host` header change, every other header line is kept as it came.
    pub fn redirected(&self, path: &str, host: &str) -> Vec<u8> {
        let mut out = format!(
            "{} {path} {}\r\n",
            self.method(),
            self.first.rsplit(' ').next().unwrap_or("HTTP/1.1")
        );
        for (n, v) in &self.headers {
            if n.eq_ignore_ascii_case("host") {
                out.push_str(&format!("{n}: {host}\r\n"));
            } else {
                out.push_str(&format!("{n}: {v}\r\n"));
            }
        }
        out.push_str("\r\n");
        out.into_bytes()
    }
}

/// `%XX` and `+` (a space, as Go's `url.Values.Encode` writes it).
fn unescape(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'+', _, _) => out.push(b' '),
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 2;
            }
            (c, _, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads one head from `conn`. `buf` holds bytes read earlier and not yet
/// used; on return it holds what followed the head. `None`: the peer closed
/// the connection between requests.
pub async fn read_head<R: AsyncRead + Unpin>(
    conn: &mut R,
    buf: &mut Vec<u8>,
) -> io::Result<Option<Head>> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let raw: Vec<u8> = buf.drain(..end + 4).collect();
            return parse(&raw[..end]).map(Some);
        }
        if buf.len() > MAX_HEAD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "head too long"));
        }
        let mut chunk = [0u8; 4096];
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn parse(raw: &[u8]) -> io::Result<Head> {
    let text = std::str::from_utf8(raw)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or("").to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(Head { first, headers })
}

/// A complete response with a body (the connection stays open).
pub fn response(status: u16, content_type: &str, body: &[u8]) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        _ => "Error",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn heads_queries_and_redirects() {
        let raw = b"GET /api/v1/namespaces/default/pods/p/exec?command=sh&command=-c&command=exit+7%3B&tty=true HTTP/1.1\r\nHost: 127.0.0.1:1\r\nX-Stream-Protocol-Version: v5.channel.k8s.io\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\nrest";
        let mut buf = raw.to_vec();
        let head = read_head(&mut tokio::io::empty(), &mut buf)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(buf, b"rest");
        assert_eq!(head.method(), "GET");
        assert_eq!(head.path(), "/api/v1/namespaces/default/pods/p/exec");
        let q = head.query();
        let cmd: Vec<&str> = q
            .iter()
            .filter(|(k, _)| k == "command")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(cmd, ["sh", "-c", "exit 7;"]);
        assert_eq!(
            head.header_values("x-stream-protocol-version"),
            ["v5.channel.k8s.io", "v4.channel.k8s.io"]
        );
        let r = String::from_utf8(head.redirected("/exec/tok", "127.0.0.1:2")).unwrap();
        assert!(r.starts_with("GET /exec/tok HTTP/1.1\r\nHost: 127.0.0.1:2\r\n"));
        assert_eq!(r.matches("X-Stream-Protocol-Version").count(), 2);
    }
}
