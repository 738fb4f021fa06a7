//! A real OCI registry for the tests: Debian's `docker-registry` (the CNCF
//! distribution registry), run from a temp directory on a free loopback
//! port, with or without basic auth and TLS; stopped when dropped.
//! `scripts/test` installs it when missing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running registry of the test's own.
pub struct OciRegistry {
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    tls: bool,
}

fn binary() -> PathBuf {
    ["/usr/bin/docker-registry", "/usr/bin/registry"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect("docker-registry is not installed: scripts/test installs it (apt-get install docker-registry)")
}

impl OciRegistry {
    /// Starts a registry; `basic` gives the one user (and password) basic
    /// auth accepts, `tls` serves HTTPS with a certificate for 127.0.0.1
    /// from a CA of its own ([`OciRegistry::ca_file`]).
    pub fn start(basic: Option<(&str, &str)>, tls: bool) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = crate::free_port();
        let d = dir.path();
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: arbiter-tests\n",
            d.join("data").display()
        );
        if tls {
            let (ca, cert, key) = crate::certificate_for("127.0.0.1");
            std::fs::write(d.join("ca.pem"), ca.pem()).expect("write ca");
            std::fs::write(d.join("cert.pem"), cert.pem()).expect("write cert");
            std::fs::write(d.join("key.pem"), key.serialize_pem()).expect("write key");
            yaml += &format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                d.join("cert.pem").display(),
                d.join("key.pem").display()
            );
        }
        if let Some((user, password)) = basic {
            let hash = bcrypt::hash(password, 5).expect("bcrypt");
            std::fs::write(d.join("htpasswd"), format!("{user}:{hash}\n")).expect("htpasswd");
            yaml += &format!(
                "auth:\n  htpasswd:\n    realm: arbiter-tests\n    path: {}\n",
                d.join("htpasswd").display()
            );
        }
        std::fs::write(d.join("config.yml"), yaml).expect("write config");
        let mut registry = OciRegistry {
            dir,
            child: None,
            port,
            tls,
        };
        registry.resume();
        registry
    }

    /// `127.0.0.1:PORT`, as references name it.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The CA that signed a TLS registry's certificate (PEM).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Where blob `digest` (`sha256:…`) is kept on disk: what a tampering
    /// attacker with access to the registry's storage would edit.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Stops it (its storage stays).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and storage; returns once it
    /// accepts connections.
    pub fn resume(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("registry.log")).expect("log");
        let child = Command::new(binary())
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("docker-registry exited ({status}): {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What it logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// The directory its storage and configuration are in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether it serves HTTPS.
    pub fn tls(&self) -> bool {
        self.tls
    }
}

impl Drop for OciRegistry {
    fn drop(&mut self) {
        self.kill();
    }
}
