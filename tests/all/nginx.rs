//! A real nginx, with `auth_request` pointed at Arbiter's authorizer, in
//! front of a small upstream that counts what reaches it: allowed requests
//! get through, denied ones get 403 and never reach it. `scripts/test`
//! installs nginx (Debian's `nginx-light`).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use arbiter::server::ServeOptions;
use arbiter_tests::http::send;
use arbiter_tests::{Server, authorizer_config, refused};
use serde_json::json;

fn nginx_binary() -> PathBuf {
    ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect("nginx is not installed: scripts/test installs it (apt-get install nginx-light)")
}

/// An upstream that answers 200 `upstream` and counts requests.
struct Upstream {
    port: u16,
    hits: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Upstream {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        let port = listener.local_addr().expect("addr").port();
        let hits = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, s) = (Arc::clone(&hits), Arc::clone(&stop));
        let thread = thread::spawn(move || {
            for stream in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf);
                h.fetch_add(1, Ordering::SeqCst);
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nConnection: close\r\n\r\nupstream",
                );
            }
        });
        Upstream {
            port,
            hits,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// nginx running from a temporary prefix; stopped on drop.
struct Nginx {
    dir: tempfile::TempDir,
    child: Child,
    port: u16,
}

impl Nginx {
    fn start(arbiter_port: u16, upstream_port: u16) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let d = dir.path().display();
        let conf = format!(
            r#"daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  # The agent comes from a key only nginx checks, never from a header the
  # client could send.
  map $http_x_api_key $arbiter_agent {{
    default "";
    "key-procurement" "procurement-bot";
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      auth_request /_arbiter;
      proxy_pass http://127.0.0.1:{upstream_port};
    }}
    location = /_arbiter {{
      internal;
      proxy_pass http://127.0.0.1:{arbiter_port}/v1/authz;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header Host $host;
      proxy_set_header X-Original-URI $request_uri;
      proxy_set_header X-Original-Method $request_method;
      # Set (or, when empty, removed) here: what the client sent never counts.
      proxy_set_header X-Agent-Id $arbiter_agent;
      proxy_set_header X-Agent-Roles "";
      proxy_set_header X-Api-Key "";
    }}
  }}
}}
"#
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).expect("write conf");
        let child = Command::new(nginx_binary())
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let nginx = Nginx { dir, child, port };
        nginx.wait_listening();
        nginx
    }

    fn wait_listening(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not start: {}",
                self.error_log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    fn conf(&self) -> PathBuf {
        self.dir.path().join("nginx.conf")
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // `-s quit` lets the workers exit too; killing the master would orphan them.
        let _ = Command::new(nginx_binary())
            .arg("-p")
            .arg(self.dir.path())
            .arg("-c")
            .arg(self.conf())
            .args(["-s", "quit"])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Arbiter behind the documented nginx snippet: the original request line
/// and the agent come from headers nginx sets; `/admin` paths are denied
/// by a policy of their own, every other path by `misbehave`'s last segment.
fn authorizer() -> Server {
    let mut config = authorizer_config();
    let a = &mut config.authorizer;
    a.original_uri_header = Some("x-original-uri".into());
    a.original_method_header = Some("x-original-method".into());
    a.agent_header = Some("x-agent-id".into());
    a.agent_roles_header = Some("x-agent-roles".into());
    Server::start(config, ServeOptions::default())
}

#[test]
fn nginx_auth_request_lets_allowed_requests_through_and_stops_denied_ones() {
    let arbiter = authorizer();
    let upstream = Upstream::start();
    let nginx = Nginx::start(arbiter.addr.port(), upstream.port);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], nginx.port));
    let agent = [("x-api-key", "key-procurement")];

    let allowed = send(addr, "GET", "/orders/allow?page=2", &agent, b"");
    assert_eq!(
        allowed.status,
        200,
        "{}\n{}",
        allowed.body,
        nginx.error_log()
    );
    assert_eq!(allowed.body, "upstream");
    assert_eq!(upstream.hits.load(Ordering::SeqCst), 1);

    for (method, path) in [
        ("GET", "/orders/deny"),
        ("POST", "/payments/approve"),
        ("PUT", "/doc/modify"),
    ] {
        let denied = send(addr, method, path, &agent, b"");
        assert_eq!(denied.status, 403, "{method} {path}: {}", denied.body);
        assert_eq!(
            upstream.hits.load(Ordering::SeqCst),
            1,
            "{method} {path} reached the upstream"
        );
    }

    // Every authorizer call was a decision, recorded by Arbiter.
    let metrics = send(arbiter.addr, "GET", "/metrics", &[], b"").body;
    assert!(
        metrics.contains("arbiter_http_responses_total{endpoint=\"authz\",status=\"200\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("arbiter_http_responses_total{endpoint=\"authz\",status=\"403\"} 3"),
        "{metrics}"
    );
}

#[test]
fn attacks_on_the_authorizer_through_nginx_are_refused() {
    let arbiter = authorizer();
    let upstream = Upstream::start();
    let nginx = Nginx::start(arbiter.addr.port(), upstream.port);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], nginx.port));
    let key = ("x-api-key", "key-procurement");
    let reached = || upstream.hits.load(Ordering::SeqCst);

    // Controls: an allowed path gets through; an admin path does not.
    assert_eq!(send(addr, "GET", "/orders/allow", &[key], b"").status, 200);
    assert_eq!(send(addr, "GET", "/admin/allow", &[key], b"").status, 403);
    assert_eq!(reached(), 1);

    let r = send(
        addr,
        "GET",
        "/orders/deny",
        &[
            key,
            ("x-original-uri", "/orders/allow"),
            ("x-original-method", "GET"),
        ],
        b"",
    );
    refused(
        "a client's X-Original-URI names an allowed path for a denied one",
        r.status == 403 && reached() == 1,
        &r.body,
    );
    for (attack, path) in [
        (
            "an admin path spelled with a percent-encoded letter",
            "/%61dmin/allow",
        ),
        ("an admin path behind a doubled slash", "//admin/allow"),
        (
            "an admin path behind a dot-dot segment",
            "/orders/../admin/allow",
        ),
        ("an admin path with a dot segment inside", "/admin/./allow"),
        (
            "an admin path behind encoded dots",
            "/orders/%2e%2e/admin/allow",
        ),
    ] {
        let r = send(addr, "GET", path, &[key], b"");
        refused(attack, r.status == 403 && reached() == 1, &r.body);
    }
    for (attack, path) in [
        ("a path with an encoded slash", "/orders%2Fallow"),
        ("a path with an encoded backslash", "/orders%5Callow"),
        ("a path with path parameters", "/admin;x=1/allow"),
    ] {
        let r = send(addr, "GET", path, &[key], b"");
        let last = arbiter.records("decision").pop().expect("a record");
        let ambiguous = last["rule"] == "http.path-ambiguous" && last["params"]["path"] == path;
        refused(
            attack,
            r.status == 403 && reached() == 1 && ambiguous,
            format!("{} {last}", r.status),
        );
    }

    // nginx refuses an encoded NUL itself; Envoy's form reaches Arbiter.
    let r = send(arbiter.addr, "GET", "/v1/authz/orders/allow%00", &[], b"");
    refused(
        "a path with an encoded NUL, Envoy's form",
        r.status == 403 && r.json()["rule"] == "http.path-ambiguous",
        &r.body,
    );

    // Identity: the client's own X-Agent-Id never counts.
    let r = send(
        addr,
        "GET",
        "/orders/allow",
        &[
            ("x-agent-id", "procurement-bot"),
            ("x-agent-roles", "admin"),
        ],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let last = arbiter.records("decision").pop().expect("a record");
    refused(
        "a client names its own agent and roles in headers",
        last["context"]["agent"] == json!({"id": "", "roles": []}),
        &last,
    );
    let r = send(
        addr,
        "GET",
        "/orders/allow",
        &[key, ("x-agent-id", "admin-bot")],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let last = arbiter.records("decision").pop().expect("a record");
    refused(
        "a client with a key sends another agent's id beside it",
        last["context"]["agent"]["id"] == "procurement-bot",
        &last,
    );
}
