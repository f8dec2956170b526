//! One HTTP/1.1 keep-alive connection to the server under test, on hyper's low-level client.
//!
//! Contract: [`Target`] is parsed once from `--url`/`--write-key` (host, path, Basic auth header
//! `base64(writeKey + ":")`); [`Conn::send`] POSTs a JSON body, reads the whole response and
//! returns its status. Any transport error is returned as `Err`, after which the connection must
//! be dropped and a new one opened.

use std::net::{SocketAddr, ToSocketAddrs};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Where and how to send requests.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    host: HeaderValue,
    auth: Option<HeaderValue>,
    /// Path prefix from the URL (no trailing slash), e.g. `""` or `"/junction"`.
    prefix: String,
}

impl Target {
    /// `url` is `http://host:port[/prefix]`; `write_key` may be empty (no Authorization header).
    pub fn parse(url: &str, write_key: &str) -> Result<Self> {
        let rest = url
            .strip_prefix("http://")
            .with_context(|| format!("--url must start with http:// (got {url:?})"))?;
        let (authority, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty() {
            bail!("--url has no host: {url:?}");
        }
        let with_port = if authority.contains(':') {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let addr = with_port
            .to_socket_addrs()
            .with_context(|| format!("resolving {with_port}"))?
            .next()
            .with_context(|| format!("{with_port} resolves to no address"))?;
        let auth = if write_key.is_empty() {
            None
        } else {
            let token = base64(format!("{write_key}:").as_bytes());
            Some(
                HeaderValue::from_str(&format!("Basic {token}"))
                    .context("write key is not a valid header value")?,
            )
        };
        Ok(Self {
            addr,
            host: HeaderValue::from_str(authority).context("invalid host")?,
            auth,
            prefix: prefix.to_string(),
        })
    }

    /// The full path of a route such as `/v1/batch`.
    pub fn path(&self, route: &str) -> String {
        format!("{}{route}", self.prefix)
    }
}

/// What came back.
#[derive(Clone, Copy, Debug)]
pub struct Outcome {
    pub status: u16,
    /// A 200 whose body lists per-event rejections.
    pub rejected: bool,
}

pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
}

impl Conn {
    /// `n` connections to `target`, opened one after the other.
    pub(crate) async fn connect_all(target: &Target, n: usize) -> anyhow::Result<Vec<Conn>> {
        let mut conns = Vec::with_capacity(n);
        for _ in 0..n {
            conns.push(Conn::connect(target).await?);
        }
        Ok(conns)
    }

    pub async fn connect(target: &Target) -> Result<Self> {
        let stream = TcpStream::connect(target.addr)
            .await
            .with_context(|| format!("connecting to {}", target.addr))?;
        stream.set_nodelay(true)?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            // Ends when the sender is dropped or the peer closes; errors surface on `send`.
            let _ = conn.await;
        });
        Ok(Self { sender })
    }

    pub async fn send(&mut self, target: &Target, path: &str, body: Bytes) -> Result<Outcome> {
        self.sender.ready().await?;
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(HOST, target.host.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(auth) = &target.auth {
            req = req.header(AUTHORIZATION, auth.clone());
        }
        let resp = self.sender.send_request(req.body(Full::new(body))?).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        let rejected = status == 200 && contains(&body, b"\"rejected\"");
        Ok(Outcome { status, rejected })
    }
}

/// A GET that returns status and body, on a fresh connection (for /ready and /metrics).
pub async fn get(target: &Target, path: &str) -> Result<(u16, Bytes)> {
    let stream = TcpStream::connect(target.addr).await?;
    let (mut sender, conn) = http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = Request::builder()
        .method(Method::GET)
        .uri(path)
        .header(HOST, target.host.clone())
        .body(Full::default())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    Ok((status, resp.into_body().collect().await?.to_bytes()))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Standard base64 with padding (RFC 4648).
pub fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_vectors() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"wk_bench:"), "d2tfYmVuY2g6");
    }

    #[test]
    fn parses_urls() {
        let t = Target::parse("http://127.0.0.1:8088/", "wk").unwrap();
        assert_eq!(t.addr.port(), 8088);
        assert_eq!(t.path("/v1/batch"), "/v1/batch");
        let t = Target::parse("http://127.0.0.1:9/x/", "").unwrap();
        assert_eq!(t.path("/v1/track"), "/x/v1/track");
        assert!(t.auth.is_none());
        assert!(Target::parse("https://x", "k").is_err());
    }
}
