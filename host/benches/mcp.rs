//! What the MCP gateway adds to a tool call: the latency of a `tools/call`
//! (`echo` of server-everything) straight to the server and through
//! Arbiter, over stdio (`arbiter mcp stdio`) and over Streamable HTTP
//! (`arbiter serve` with the server as an `[[mcp.servers]]` upstream), in
//! alternating rounds of one run. Arbiter runs rate-guard, shell-guard and
//! pii-redact on every call and records each decision in its log.
//!
//! Run with `cargo bench -p arbiter --bench mcp` (the peers are installed
//! by `scripts/mcp-peers` on first use). Prints each path's median and p90
//! and the difference of the medians; the target is under 1 ms added.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use serde_json::{Value, json};
use tokio::net::TcpStream;

const ROUNDS: usize = 10;
const CALLS_PER_ROUND: usize = 200;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo")
        .to_owned()
}

fn everything() -> String {
    let o = Command::new(repo().join("scripts/mcp-peers"))
        .stderr(Stdio::inherit())
        .output()
        .expect("scripts/mcp-peers");
    assert!(o.status.success(), "scripts/mcp-peers failed");
    let peers = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
    peers
        .join("node_modules/@modelcontextprotocol/server-everything/dist/index.js")
        .display()
        .to_string()
}

fn config(dir: &Path, upstream: Option<&str>) -> PathBuf {
    let mut text = String::from(
        r#"[server]
listen = "127.0.0.1:0"
[log]
dir = "log"
[state]
dir = "state"
[[policies]]
name = "rate-guard"
example = "rate-guard"
settings = { max_calls_per_minute = 100000000, max_same_action_per_minute = 100000000 }
[[policies]]
name = "shell-guard"
example = "shell-guard"
[[policies]]
name = "pii-redact"
example = "pii-redact"
settings = { tools = ["echo"] }
[[routes]]
kind = "mcp"
chain = ["rate-guard", "shell-guard", "pii-redact"]
[[mcp.servers]]
name = "everything"
"#,
    );
    if let Some(u) = upstream {
        text.push_str(&format!("upstream = \"{u}\"\n"));
    }
    let path = dir.join("arbiter.toml");
    std::fs::write(&path, text).expect("config");
    path
}

fn initialize(id: u64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "bench", "version": "1"}}})
}

fn echo(id: u64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"message": "meeting at 10 in room 4"}}})
}

/// A stdio MCP client on a child process.
struct StdioClient {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
    next: u64,
}

impl StdioClient {
    fn spawn(argv: &[String]) -> Self {
        let mut child = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let input = child.stdin.take().expect("stdin");
        let output = BufReader::new(child.stdout.take().expect("stdout"));
        let mut c = StdioClient {
            child,
            input,
            output,
            next: 1,
        };
        let init = c.ask(&initialize(0));
        assert!(init["result"].is_object(), "{init}");
        c.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        c
    }

    fn send(&mut self, m: &Value) {
        let mut line = m.to_string();
        line.push('\n');
        self.input.write_all(line.as_bytes()).expect("write");
        self.input.flush().expect("flush");
    }

    fn ask(&mut self, m: &Value) -> Value {
        self.send(m);
        loop {
            let mut line = String::new();
            self.output.read_line(&mut line).expect("read");
            assert!(!line.is_empty(), "the server closed its output");
            let v: Value = serde_json::from_str(&line).expect("json");
            if v["id"] == m["id"] {
                return v;
            }
        }
    }

    fn call(&mut self) -> Duration {
        self.next += 1;
        let m = echo(self.next);
        let start = Instant::now();
        let r = self.ask(&m);
        let took = start.elapsed();
        assert!(r["result"]["content"].is_array(), "{r}");
        took
    }
}

impl Drop for StdioClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Streamable HTTP MCP client on one kept-alive connection.
struct HttpClient {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    authority: String,
    path: String,
    session: Option<String>,
    next: u64,
}

impl HttpClient {
    async fn connect(url: &str) -> Self {
        let uri: hyper::Uri = url.parse().expect("url");
        let authority = uri.authority().expect("authority").to_string();
        let stream = TcpStream::connect(&authority).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .expect("handshake");
        tokio::spawn(conn);
        let mut c = HttpClient {
            sender,
            authority,
            path: uri.path().to_owned(),
            session: None,
            next: 1,
        };
        let init = c.ask(&initialize(0)).await;
        assert!(init["result"].is_object(), "{init}");
        c.ask(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await;
        c
    }

    async fn ask(&mut self, m: &Value) -> Value {
        let mut req = Request::post(&self.path)
            .header("host", &self.authority)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-06-18");
        if let Some(s) = &self.session {
            req = req.header("mcp-session-id", s);
        }
        let req = req
            .body(Full::new(Bytes::from(m.to_string())))
            .expect("request");
        self.sender.ready().await.expect("ready");
        let r = self.sender.send_request(req).await.expect("send");
        if let Some(s) = r.headers().get("mcp-session-id") {
            self.session = Some(s.to_str().expect("session").to_owned());
        }
        let body = r.into_body().collect().await.expect("body").to_bytes();
        let text = String::from_utf8_lossy(&body);
        // JSON, or an event stream whose data lines carry the answer.
        let data = text
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(str::trim)
            .find(|d| d.contains("\"id\""))
            .unwrap_or(text.trim());
        serde_json::from_str(data).unwrap_or(Value::Null)
    }

    async fn call(&mut self) -> Duration {
        self.next += 1;
        let m = echo(self.next);
        let start = Instant::now();
        let r = self.ask(&m).await;
        let took = start.elapsed();
        assert!(r["result"]["content"].is_array(), "{r}");
        took
    }
}

/// Starts a process and waits for a line of its stderr or stdout that
/// contains `ready`; returns the process and that line.
fn start(argv: &[String], env: &[(&str, String)], ready: &str) -> (Child, String) {
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    for pipe in [
        Box::new(child.stdout.take().expect("out")) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().expect("err")),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
    }
    loop {
        let Ok(l) = rx.recv_timeout(Duration::from_secs(60)) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{argv:?} never said `{ready}`");
        };
        if l.contains(ready) {
            std::thread::spawn(move || while rx.recv().is_ok() {});
            return (child, l);
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn median_p90(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1e6;
    (at(0.5), at(0.9))
}

fn report(transport: &str, direct: Vec<Duration>, gated: Vec<Duration>) {
    let n = direct.len();
    let (dm, d90) = median_p90(direct);
    let (gm, g90) = median_p90(gated);
    println!(
        "{transport:<6} direct   median {dm:>8.1} µs  p90 {d90:>8.1} µs  ({n} calls)\n{transport:<6} arbiter  median {gm:>8.1} µs  p90 {g90:>8.1} µs\n{transport:<6} added    median {:>8.1} µs  (target < 1000 µs)",
        gm - dm
    );
}

fn main() {
    let everything = everything();
    let arbiter = env!("CARGO_BIN_EXE_arbiter").to_owned();
    let dir = tempfile::tempdir().expect("dir");

    // stdio
    let cfg = config(dir.path(), None);
    let mut direct = StdioClient::spawn(&["node".into(), everything.clone(), "stdio".into()]);
    let mut gated = StdioClient::spawn(&[
        arbiter.clone(),
        "mcp".into(),
        "stdio".into(),
        "--name".into(),
        "everything".into(),
        "--config".into(),
        cfg.display().to_string(),
        "--".into(),
        "node".into(),
        everything.clone(),
        "stdio".into(),
    ]);
    for _ in 0..CALLS_PER_ROUND {
        direct.call();
        gated.call();
    }
    let (mut d, mut g) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        // Alternate which goes first, so drift hits both alike.
        for first in [round % 2 == 0, round % 2 == 1] {
            for _ in 0..CALLS_PER_ROUND {
                if first {
                    d.push(direct.call());
                } else {
                    g.push(gated.call());
                }
            }
        }
    }
    drop((direct, gated));
    report("stdio", d, g);

    // Streamable HTTP
    let port = free_port();
    let (mut upstream, _) = start(
        &["node".into(), everything, "streamableHttp".into()],
        &[("PORT", port.to_string())],
        "listening on port",
    );
    let up = format!("http://127.0.0.1:{port}/mcp");
    let http_dir = tempfile::tempdir().expect("dir");
    let cfg = config(http_dir.path(), Some(&up));
    let (mut server, line) = start(
        &[
            arbiter,
            "serve".into(),
            "--config".into(),
            cfg.display().to_string(),
        ],
        &[],
        "listening on http://",
    );
    let addr = line
        .split("http://")
        .nth(1)
        .expect("addr")
        .trim()
        .to_owned();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        // Wait for the policies to load.
        let start = Instant::now();
        while std::net::TcpStream::connect(&addr).is_err() || !ready(&addr) {
            assert!(start.elapsed() < Duration::from_secs(60), "never ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut direct = HttpClient::connect(&up).await;
        let mut gated = HttpClient::connect(&format!("http://{addr}/mcp/everything")).await;
        for _ in 0..CALLS_PER_ROUND {
            direct.call().await;
            gated.call().await;
        }
        let (mut d, mut g) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            for first in [round % 2 == 0, round % 2 == 1] {
                for _ in 0..CALLS_PER_ROUND {
                    if first {
                        d.push(direct.call().await);
                    } else {
                        g.push(gated.call().await);
                    }
                }
            }
        }
        report("http", d, g);
    });
    let _ = Command::new("kill").arg(server.id().to_string()).status();
    let _ = server.wait();
    let _ = upstream.kill();
    let _ = upstream.wait();
}

fn ready(addr: &str) -> bool {
    use std::io::Read;
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.write_all(
        format!("GET /readyz HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n").as_bytes(),
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.1 200")
}
