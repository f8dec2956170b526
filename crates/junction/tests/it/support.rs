//! Shared test helpers: an in-process app (router + real storage in a temp dir) and a real
//! `junction serve` child process with its config, data dir and port.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, Response};
use http_body_util::BodyExt;
use junction::http::SharedState;
use tower::ServiceExt;

pub const WRITE_KEY: &str = "wk_web_0123";
pub const OTHER_WRITE_KEY: &str = "wk_ios_4567";
pub const ADMIN_TOKEN: &str = "tok_admin_abcd";
pub const EVENTS_TOKEN: &str = "tok_events_abcd";
pub const PROFILES_TOKEN: &str = "tok_profiles_abcd";

/// The config every test server uses, plus `extra` TOML appended (sections of its own).
pub fn config_text(data_dir: &Path, extra: &str) -> String {
    format!(
        r#"version = 1
workspace = "acme"

[server]
data_dir = "{}"

[[sources]]
name = "web"
write_key = "{WRITE_KEY}"

[[sources]]
name = "ios"
write_key = "{OTHER_WRITE_KEY}"

[[tokens]]
name = "admin"
secret = "{ADMIN_TOKEN}"
scopes = ["admin"]

[[tokens]]
name = "debugger"
secret = "{EVENTS_TOKEN}"
scopes = ["events:read"]

[[tokens]]
name = "profiles"
secret = "{PROFILES_TOKEN}"
scopes = ["profiles:read"]
{extra}"#,
        data_dir.display()
    )
}

/// The router over real storage in a temp dir, called in process.
pub struct TestApp {
    pub dir: tempfile::TempDir,
    pub state: SharedState,
    _shutdown: tokio::sync::watch::Sender<bool>,
}

impl TestApp {
    pub fn new() -> Self {
        Self::with_config("")
    }

    pub fn with_config(extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::in_dir(dir, extra)
    }

    pub fn in_dir(dir: tempfile::TempDir, extra: &str) -> Self {
        Self::build(dir, extra, Default::default())
    }

    pub fn with_clock(clock: Arc<dyn junction::clock::Clock>) -> Self {
        Self::in_dir_with_clock(tempfile::tempdir().unwrap(), "", clock)
    }

    pub fn in_dir_with_clock(
        dir: tempfile::TempDir,
        extra: &str,
        clock: Arc<dyn junction::clock::Clock>,
    ) -> Self {
        let options = junction::server::Options {
            clock: Some(clock),
            ..Default::default()
        };
        Self::build(dir, extra, options)
    }

    fn build(dir: tempfile::TempDir, extra: &str, options: junction::server::Options) -> Self {
        let text = config_text(dir.path(), extra);
        let file = junction::config::parse_file(&text, Path::new("test.toml")).unwrap();
        let config = junction::config::build(Some(file), &Default::default()).unwrap();
        let (tx, rx) = tokio::sync::watch::channel(false);
        let state = junction::server::open_state(config, options, rx).unwrap();
        TestApp {
            dir,
            state,
            _shutdown: tx,
        }
    }

    /// Stops storage and hands back the data dir (to reopen it).
    pub fn close(self) -> tempfile::TempDir {
        self.state.compute.stop();
        self.state.ingestor.log().shutdown();
        self.state.processor.stop();
        self.state
            .ingestor
            .dedup()
            .write_snapshot(self.state.ingestor.log().next_offset())
            .unwrap();
        self.dir
    }

    pub async fn call(
        &self,
        req: Request<Body>,
    ) -> (u16, axum::http::HeaderMap, serde_json::Value) {
        let resp: Response<Body> = junction::http::router(Arc::clone(&self.state))
            .oneshot(req)
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let json = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&bytes).into())
            })
        };
        (status, headers, json)
    }

    pub async fn post(&self, path: &str, body: impl Into<Body>) -> (u16, serde_json::Value) {
        let req = Request::post(path)
            .header("authorization", basic(WRITE_KEY))
            .body(body.into())
            .unwrap();
        let (s, _, j) = self.call(req).await;
        (s, j)
    }

    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let (s, _, j) = self
            .call(Request::get(path).body(Body::empty()).unwrap())
            .await;
        (s, j)
    }

    /// Every stored event as JSON, in log order.
    pub fn stored(&self) -> Vec<serde_json::Value> {
        read_log(&self.state.config.log.dir)
            .into_iter()
            .map(|(_, v)| v)
            .collect()
    }
}

pub fn basic(key: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{key}:"))
    )
}

/// (source, event) for every record in a log directory, read with the public reader.
pub fn read_log(dir: &Path) -> Vec<(String, serde_json::Value)> {
    let mut out = Vec::new();
    if !dir.exists() {
        return out;
    }
    let mut r = junction::log::LogReader::open(dir, 0).unwrap();
    while let Some(rec) = r.next_record().unwrap() {
        out.push((
            rec.source.to_string(),
            serde_json::from_slice(&rec.json).unwrap(),
        ));
    }
    out
}

pub fn junction_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_junction"))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `junction serve` child process.
pub struct Server {
    pub child: Child,
    pub port: u16,
    pub data_dir: PathBuf,
    pub config: PathBuf,
}

impl Server {
    /// Writes the test config (plus `extra`) into `dir` and starts a server on a free port.
    pub fn start(dir: &Path, extra: &str) -> Server {
        let config = dir.join("junction.toml");
        let data_dir = dir.join("data");
        std::fs::write(&config, config_text(&data_dir, extra)).unwrap();
        Self::start_with(&config, &data_dir)
    }

    /// Like `start`, with `server_opts` lines added to the `[server]` section.
    pub fn start_with_server_opts(dir: &Path, server_opts: &str) -> Server {
        let config = dir.join("junction.toml");
        let data_dir = dir.join("data");
        let text = config_text(&data_dir, "").replacen(
            "[server]\n",
            &format!("[server]\n{server_opts}\n"),
            1,
        );
        std::fs::write(&config, text).unwrap();
        Self::start_with(&config, &data_dir)
    }

    pub fn start_with(config: &Path, data_dir: &Path) -> Server {
        Self::start_on(config, data_dir, free_port())
    }

    pub fn start_on(config: &Path, data_dir: &Path, port: u16) -> Server {
        let child = Command::new(junction_bin())
            .args(["serve", "--config"])
            .arg(config)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .env("JUNCTION_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut s = Server {
            child,
            port,
            data_dir: data_dir.to_path_buf(),
            config: config.to_path_buf(),
        };
        s.wait_ready();
        s
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("junction serve exited early: {status}");
            }
            // Answering /health, not just a connect: the listener is bound before storage
            // is open, so a connection alone may wait in the backlog.
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::{Read, Write};
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = [0u8; 12];
                if s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .is_ok()
                    && s.read_exact(&mut buf).is_ok()
                    && &buf == b"HTTP/1.1 200"
                {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("junction serve did not start listening within 30 s");
    }

    /// The first lines the server printed on stdout (dev-mode credentials, listen address).
    pub fn stdout_lines(&mut self, n: usize) -> Vec<String> {
        let out = self.child.stdout.take().unwrap();
        BufReader::new(out)
            .lines()
            .take(n)
            .map(|l| l.unwrap())
            .collect()
    }

    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        signal(&self.child, "TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                self.child.kill().unwrap();
                panic!("junction serve did not exit within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `junction events tail --json` on this server's data dir, parsed.
    pub fn tail_json(&self) -> Vec<serde_json::Value> {
        tail_json(&self.data_dir, &[])
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} failed");
}

/// Runs `junction events tail --json --data-dir DIR [extra...]` and parses each line.
pub fn tail_json(data_dir: &Path, extra: &[&str]) -> Vec<serde_json::Value> {
    let out = Command::new(junction_bin())
        .args(["events", "tail", "--json", "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tail failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("tail printed a non-JSON line {l:?}: {e}"))
        })
        .collect()
}

/// Runs `junction ARGS` in `cwd` with only `env` of the `JUNCTION_*` location variables:
/// (success, stdout, stderr).
/// `junction import FILE --source SOURCE --config CONFIG`.
pub fn import(config: &Path, file: &Path, source: &str) -> std::process::Output {
    Command::new(junction_bin())
        .arg("import")
        .arg(file)
        .args(["--source", source, "--config"])
        .arg(config)
        .output()
        .unwrap()
}

pub fn run_junction(args: &[&str], env: &[(&str, String)], cwd: &Path) -> (bool, String, String) {
    let out = Command::new(junction_bin())
        .args(args)
        .env_remove("JUNCTION_LISTEN")
        .env_remove("JUNCTION_CONFIG")
        .env_remove("JUNCTION_DATA_DIR")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .current_dir(cwd)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// True under CI: a missing external service or tool is then a failure, not a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}
