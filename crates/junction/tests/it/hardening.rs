//! HTTP hardening and lifecycle against a real `junction serve`: header-read timeout,
//! request deadline, connection cap, graceful shutdown.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::support::*;

fn request(path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Length: {}\r\n\r\n{body}",
        basic(WRITE_KEY),
        body.len()
    )
}

/// Reads until the peer closes or `limit` passes; returns what arrived and whether it closed.
fn read_until_close(s: &mut TcpStream, limit: Duration) -> (String, bool) {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&out).into(), true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (String::from_utf8_lossy(&out).into(), true);
            }
            Err(_) => return (String::from_utf8_lossy(&out).into(), false),
        }
    }
}

#[test]
fn slow_headers_are_cut_off_by_the_header_read_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_server_opts(dir.path(), "header_read_timeout_secs = 1");
    let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    s.write_all(b"POST /v1/track HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let started = Instant::now();
    let (_, closed) = read_until_close(&mut s, Duration::from_secs(5));
    assert!(closed, "a connection stuck in its headers must be closed");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "closed after {:?}",
        started.elapsed()
    );
    // The server still serves.
    let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    s.write_all(request("/v1/track", r#"{"userId":"u","event":"E"}"#).as_bytes())
        .unwrap();
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}

#[test]
fn a_slow_body_hits_the_request_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_server_opts(dir.path(), "request_timeout_secs = 1");
    let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    s.write_all(format!("POST /v1/track HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Length: 100\r\n\r\n{{\"userId\"", basic(WRITE_KEY)).as_bytes()).unwrap();
    let started = Instant::now();
    let (text, _) = read_until_close(&mut s, Duration::from_secs(5));
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_timeout"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[test]
fn connections_over_the_cap_wait_until_one_closes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_server_opts(dir.path(), "max_connections = 2");
    let ok = |s: &mut TcpStream| {
        s.write_all(request("/v1/track", r#"{"userId":"u","event":"E"}"#).as_bytes())
            .unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    };
    let mut a = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    let mut b = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    ok(&mut a);
    ok(&mut b);
    let mut c = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    c.write_all(request("/v1/track", r#"{"userId":"u","event":"E"}"#).as_bytes())
        .unwrap();
    c.set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let mut buf = [0u8; 512];
    assert!(
        c.read(&mut buf).is_err(),
        "a third connection must not be served while two are open"
    );
    drop(a);
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let n = c.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}

#[test]
fn sigterm_finishes_in_flight_requests_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "");
    let body =
        r#"{"batch":[{"type":"track","event":"InFlight","userId":"u","messageId":"inflight-1"}]}"#;
    let head = format!(
        "POST /v1/batch HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Length: {}\r\n\r\n",
        basic(WRITE_KEY),
        body.len()
    );
    let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&body.as_bytes()[..10]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    signal(&server.child, "TERM");
    std::thread::sleep(Duration::from_millis(300));
    s.write_all(&body.as_bytes()[10..]).unwrap();
    let (text, _) = read_until_close(&mut s, Duration::from_secs(5));
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "in-flight request must complete: {text}"
    );
    let data_dir = server.data_dir.clone();
    let status = server.terminate();
    assert!(status.success(), "exit status {status}");
    let stored = tail_json(&data_dir, &[]);
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["messageId"], "inflight-1");
}
