//! A fleet for the tests and the fleet benchmark: real `arbiter serve`
//! processes sharing one PostgreSQL, each with its own configuration,
//! state and log directory and loopback ports, killed (`SIGKILL`) when
//! dropped.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::http;

/// The admin token every replica accepts.
pub const ADMIN: &str = "fleet-admin-token";
/// An approver's token, named `carol`.
pub const CAROL: &str = "fleet-carol-token";

/// Procurement for payments; rate-guard, with a budget of $100 a day
/// and no other limit that matters here, for everything else.
pub const POLICIES: &str = "\
[[policies]]\nname = \"procurement\"\nexample = \"procurement\"\n\
[[policies]]\nname = \"rate-guard\"\nexample = \"rate-guard\"\n\
settings = { max_denials_per_hour = 1000000, max_calls_per_minute = 1000000, max_same_action_per_minute = 1000000, daily_budget_cents = 10000 }\n\
[[routes]]\nkind = \"tool\"\nname = \"payments.*\"\nchain = [\"procurement\"]\n\
[[routes]]\nkind = \"tool\"\nchain = [\"rate-guard\"]\n";

/// One `arbiter serve` process.
pub struct Replica {
    /// Its name, for messages.
    pub name: String,
    /// The decision plane.
    pub addr: SocketAddr,
    /// The admin plane.
    pub admin: SocketAddr,
    /// Its directory: configuration, `state/`, `log/`.
    pub dir: PathBuf,
    child: Option<Child>,
}

fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], crate::free_port()))
}

impl Replica {
    /// Writes a configuration in `dir` (its state and log under it) for a
    /// replica whose `[state]` also says `state` (`backend`, `url`, ...),
    /// serving `body` (policies, routes, other tables), starts it and
    /// waits until it is ready.
    pub fn start(name: &str, dir: &Path, state: &str, body: &str) -> Replica {
        std::fs::create_dir_all(dir).expect("replica dir");
        let (addr, admin) = (free_addr(), free_addr());
        let carol = arbiter::identity::token_digest(CAROL);
        let text = format!(
            "[server]\nlisten = \"{addr}\"\n[admin]\nlisten = \"{admin}\"\n\
             [[admin.operators]]\nname = \"carol\"\nsha256 = \"{carol}\"\nroles = [\"approver\", \"operator\"]\n\
             [auth]\nadmin_token = \"{ADMIN}\"\n[log]\ndir = \"log\"\n[cache]\nenabled = false\n\
             [state]\ndir = \"state\"\n{state}\n{body}"
        );
        std::fs::write(dir.join("arbiter.toml"), text).expect("config");
        let mut r = Replica {
            name: name.to_owned(),
            addr,
            admin,
            dir: dir.to_owned(),
            child: None,
        };
        r.restart();
        r
    }

    /// Starts the process again (after [`Replica::kill`]) and waits until
    /// it is ready.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "{} is running", self.name);
        let out = std::fs::File::create(self.dir.join("serve.out")).expect("output file");
        let child = Command::new(crate::binary::arbiter())
            .arg("serve")
            .arg("--config")
            .arg(self.dir.join("arbiter.toml"))
            .env("ARBITER_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .expect("arbiter serve");
        self.child = Some(child);
        self.wait_ready(crate::PATIENCE);
    }

    /// Waits until `/readyz` says 200.
    ///
    /// # Panics
    /// When it does not within `limit`, with the replica's output.
    pub fn wait_ready(&self, limit: Duration) {
        let start = Instant::now();
        while self.readyz() != 200 {
            assert!(
                start.elapsed() < limit,
                "{} not ready within {limit:?}: {}",
                self.name,
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `/readyz`'s status; 0 when nothing answers.
    pub fn readyz(&self) -> u16 {
        if TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).is_err() {
            return 0;
        }
        http::get(self.addr, "/readyz").status
    }

    /// What the process wrote to stderr so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(self.dir.join("serve.out")).unwrap_or_default()
    }

    /// The `[state]` lines of a replica on `url`'s database, with calls
    /// given 5 s: a test machine may be loaded far past a production one.
    pub fn on_postgres(url: &str) -> String {
        format!("backend = \"postgres\"\nurl = \"{url}\"\ntimeout_ms = 5000\n")
    }

    /// `POST /v1/decide` with `body`; the decision.
    pub fn decide(&self, body: &serde_json::Value) -> serde_json::Value {
        let r = http::post_json(self.addr, "/v1/decide", body);
        assert_eq!(r.status, 200, "{}: {}", self.name, r.body);
        r.json()
    }

    /// `GET path` on the admin plane with `token`.
    pub fn admin_get(&self, token: &str, path: &str) -> http::Reply {
        let auth = format!("Bearer {token}");
        http::send(self.admin, "GET", path, &[("authorization", &auth)], b"")
    }

    /// `agent`'s calls in the last minute as this replica counts them
    /// (`GET /v1/agents`).
    pub fn calls_last_minute(&self, agent: &str) -> u64 {
        let r = self.admin_get(ADMIN, &format!("/v1/agents?agent={agent}"));
        assert_eq!(r.status, 200, "{}: {}", self.name, r.body);
        r.json()["agents"][0]["calls_last_minute"]
            .as_u64()
            .unwrap_or(0)
    }

    /// `POST path` on the admin plane with `token` and a JSON `body`.
    pub fn admin_post(&self, token: &str, path: &str, body: &serde_json::Value) -> http::Reply {
        let auth = format!("Bearer {token}");
        http::send(
            self.admin,
            "POST",
            path,
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            body.to_string().as_bytes(),
        )
    }

    /// The decision log's directory.
    pub fn log_dir(&self) -> PathBuf {
        self.dir.join("log")
    }

    /// Kills the process at once (`SIGKILL`), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}
