//! Signed policies through a real server: every refusal reason at start
//! and on hot reload (the old version answering meanwhile), tampering and
//! a revoked key under load, hostile signature files, and the evidence a
//! decision carries.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::SystemTime;

use arbiter::signing::{KeyPair, MAX_SIGNATURE_FILE_BYTES};
use arbiter_tests::http::{Conn, get};
use arbiter_tests::{Server, artifacts, decide, replace_by_rename, tool_call, wait_for};
use serde_json::Value;

/// The keys of these tests: `team` is trusted for everything, `finance`
/// only for `finance-*`, `old` is trusted but revoked, `stranger` is not
/// trusted at all.
struct Keys {
    team: KeyPair,
    finance: KeyPair,
    old: KeyPair,
    stranger: KeyPair,
}

impl Keys {
    fn new() -> Self {
        Keys {
            team: KeyPair::generate("team").expect("key"),
            finance: KeyPair::generate("finance").expect("key"),
            old: KeyPair::generate("old").expect("key"),
            stranger: KeyPair::generate("stranger").expect("key"),
        }
    }

    fn trust(&self) -> String {
        format!(
            "[trust]\nrequire_signatures = true\nrevoked = [\"old\"]\n\
             [[trust.keys]]\nid = \"team\"\npublic_key = \"{}\"\n\
             [[trust.keys]]\nid = \"finance\"\npublic_key = \"{}\"\npolicies = [\"finance-*\"]\n\
             [[trust.keys]]\nid = \"old\"\npublic_key = \"{}\"\n",
            self.team.public().hex(),
            self.finance.public().hex(),
            self.old.public().hex()
        )
    }
}

fn sign(key: &KeyPair, name: &str, bytes: &[u8]) -> Vec<u8> {
    key.sign(name, "1.0.0", bytes, SystemTime::now())
        .expect("sign")
        .to_json()
        .into_bytes()
}

fn allow_bytes() -> Vec<u8> {
    std::fs::read(artifacts::VERDICT_ALLOW).expect("read")
}

fn deny_bytes() -> Vec<u8> {
    std::fs::read(artifacts::VERDICT_DENY).expect("read")
}

/// One way to be refused: the component and signature file to deploy,
/// and what the refusal must say.
struct Refusal {
    what: &'static str,
    component: Vec<u8>,
    signature: Option<Vec<u8>>,
    says: &'static str,
}

/// Every refusal reason, each for a new version of policy `p` (the deny
/// build, so a refusal that slipped through would show in decisions).
fn refusals(keys: &Keys) -> Vec<Refusal> {
    let deny = deny_bytes();
    let mut tampered = deny.clone();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0x01;
    let good = String::from_utf8(sign(&keys.team, "p", &deny)).expect("utf-8");
    // Another valid-looking signature in the file: not the key's.
    let forged = {
        let other = String::from_utf8(sign(&keys.stranger, "p", &deny)).expect("utf-8");
        let sig = |t: &str| {
            serde_json::from_str::<Value>(t).expect("json")["signature"]
                .as_str()
                .expect("signature")
                .to_owned()
        };
        good.replace(&sig(&good), &sig(&other))
    };
    vec![
        Refusal {
            what: "unsigned",
            component: deny.clone(),
            signature: None,
            says: "it is unsigned: there is no",
        },
        Refusal {
            what: "tampered after signing",
            component: tampered,
            signature: Some(good.clone().into_bytes()),
            says: "its bytes do not match the signed digest",
        },
        Refusal {
            what: "signature not the key's",
            component: deny.clone(),
            signature: Some(forged.into_bytes()),
            says: "the signature does not verify with key `team`",
        },
        Refusal {
            what: "unknown key",
            component: deny.clone(),
            signature: Some(sign(&keys.stranger, "p", &deny)),
            says: "signed by key `stranger`, which is not trusted",
        },
        Refusal {
            what: "revoked key",
            component: deny.clone(),
            signature: Some(sign(&keys.old, "p", &deny)),
            says: "signed by key `old`, which is revoked",
        },
        Refusal {
            what: "out-of-scope key",
            component: deny.clone(),
            signature: Some(sign(&keys.finance, "p", &deny)),
            says: "key `finance` may sign only `finance-*`, not `p`",
        },
        Refusal {
            what: "signed as another policy",
            component: deny.clone(),
            signature: Some(sign(&keys.team, "q", &deny)),
            says: "signed as policy `q` but is configured as `p`",
        },
        Refusal {
            what: "malformed signature file",
            component: deny.clone(),
            signature: Some(b"{\"format\": \"arbiter-signature/1\", \"payload\": 7}".to_vec()),
            says: "the signature file is malformed",
        },
        Refusal {
            what: "truncated signature file",
            component: deny.clone(),
            signature: Some(good.as_bytes()[..good.len() - 40].to_vec()),
            says: "the signature file is malformed: EOF",
        },
        Refusal {
            what: "oversized signature file",
            component: deny,
            signature: Some(vec![b' '; MAX_SIGNATURE_FILE_BYTES as usize + 10]),
            says: "over the limit of 16384",
        },
    ]
}

struct Deployment {
    dir: tempfile::TempDir,
}

impl Deployment {
    fn new(keys: &Keys, component: &[u8], signature: Option<&[u8]>) -> Self {
        let d = Deployment {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        d.write_config(&keys.trust());
        d.deploy(component, signature);
        d
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write_config(&self, trust: &str) {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[cache]\nenabled = false\n[reload]\ndebounce_ms = 20\n\
             [auth]\nadmin_token = \"root\"\n{trust}\n\
             [[policies]]\nname = \"p\"\nfile = \"p.wasm\"\n[[routes]]\nchain = [\"p\"]\n"
        );
        replace_by_rename(&self.path("arbiter.toml"), text.as_bytes());
    }

    /// The signature first, then the component, each by rename.
    fn deploy(&self, component: &[u8], signature: Option<&[u8]>) {
        let sig = self.path("p.wasm.sig");
        match signature {
            Some(s) => replace_by_rename(&sig, s),
            None => {
                let _ = std::fs::remove_file(&sig);
            }
        }
        replace_by_rename(&self.path("p.wasm"), component);
    }

    fn config(&self) -> PathBuf {
        self.path("arbiter.toml")
    }
}

#[test]
fn every_refusal_reason_stops_the_start_and_names_itself() {
    let keys = Keys::new();
    for r in refusals(&keys) {
        let d = Deployment::new(&keys, &r.component, r.signature.as_deref());
        let server = Server::bind_file(&d.config());
        let e = server.ready().expect_err(r.what).to_string();
        assert!(
            e.contains("policy `p`") && e.contains("step verify") && e.contains(r.says),
            "{}: {e}",
            r.what
        );
    }
}

#[test]
fn every_refusal_reason_on_reload_keeps_the_old_version_answering() {
    let keys = Keys::new();
    let allow = allow_bytes();
    let d = Deployment::new(&keys, &allow, Some(&sign(&keys.team, "p", &allow)));
    let server = Server::start_file(&d.config());
    for (i, r) in refusals(&keys).into_iter().enumerate() {
        d.deploy(&r.component, r.signature.as_deref());
        wait_for(r.what, || {
            server.policy_status()["last_error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(r.says))
        });
        let s = server.policy_status();
        assert_eq!(s["last_error"]["step"], "verify", "{}: {s}", r.what);
        let d = decide(server.addr);
        assert_eq!(
            (d["outcome"].as_str(), d["policies"][0]["signer"].as_str()),
            (Some("allow"), Some("team")),
            "{}",
            r.what
        );
        let failures = get(server.addr, "/metrics")
            .body
            .lines()
            .find_map(|l| {
                l.strip_prefix("arbiter_policy_load_failures_total{policy=\"p\",stage=\"verify\"} ")
                    .and_then(|n| n.parse::<usize>().ok())
            })
            .unwrap_or(0);
        assert!(failures > i, "{}: {failures} failures counted", r.what);
    }
    // A good signature brings the new version in.
    let deny = deny_bytes();
    d.deploy(&deny, Some(&sign(&keys.team, "p", &deny)));
    wait_for("the signed deny version", || {
        decide(server.addr)["outcome"] == "deny"
    });
}

#[test]
fn tampering_and_a_revoked_key_are_refused_under_load() {
    let keys = Keys::new();
    let allow = allow_bytes();
    let d = Deployment::new(&keys, &allow, Some(&sign(&keys.team, "p", &allow)));
    let server = Server::start_file(&d.config());
    let stop = Arc::new(AtomicBool::new(false));
    let decided = Arc::new(AtomicU64::new(0));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (stop, decided, addr) = (Arc::clone(&stop), Arc::clone(&decided), server.addr);
            thread::spawn(move || {
                let mut conn = Conn::open(addr);
                let body = tool_call();
                while !stop.load(Ordering::Relaxed) {
                    let r = conn.post_json("/v1/decide", &body);
                    assert_eq!(r.status, 200, "{}", r.body);
                    let d = r.json();
                    assert_eq!(d["outcome"], "allow", "a refused version decided: {d}");
                    assert_eq!(d["policies"][0]["signer"], "team", "{d}");
                    decided.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let deny = deny_bytes();
    let mut tampered = deny.clone();
    tampered[100] ^= 0x80;
    for (component, signature, says) in [
        (
            tampered,
            sign(&keys.team, "p", &deny),
            "do not match the signed digest",
        ),
        (
            deny.clone(),
            sign(&keys.old, "p", &deny),
            "`old`, which is revoked",
        ),
    ] {
        d.deploy(&component, Some(&signature));
        wait_for(says, || {
            server.policy_status()["last_error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(says))
        });
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join()
            .expect("no decision failed or came from a refused version");
    }
    assert!(decided.load(Ordering::Relaxed) > 100);
}

#[test]
fn decisions_and_the_status_name_the_signer_and_signed_version() {
    let keys = Keys::new();
    let allow = allow_bytes();
    let sig = keys
        .team
        .sign("p", "2.1.0-rc.1", &allow, SystemTime::now())
        .expect("sign");
    let d = Deployment::new(&keys, &allow, Some(sig.to_json().as_bytes()));
    let server = Server::start_file(&d.config());
    let decision = decide(server.addr);
    let p = &decision["policies"][0];
    assert_eq!(
        (p["signer"].as_str(), p["signed_version"].as_str()),
        (Some("team"), Some("2.1.0-rc.1"))
    );
    let s = server.policy_status();
    assert_eq!(s["signer"]["key_id"], "team");
    assert_eq!(s["signer"]["version"], "2.1.0-rc.1");
    assert_eq!(s["signer"]["signed_at"], sig.payload.signed_at.as_str());
    assert_eq!(s["versions"][0]["signer"]["key_id"], "team");
}

#[test]
fn a_key_is_rotated_then_revoked_without_a_gap() {
    let keys = Keys::new();
    let allow = allow_bytes();
    let d = Deployment::new(&keys, &allow, Some(&sign(&keys.team, "p", &allow)));
    let server = Server::start_file(&d.config());
    let config_step = || server.admin_get("/v1/policies").json()["config"]["last_attempt"].clone();
    // Writes a configuration and waits for its attempt.
    let reconfigure = |trust: &str| {
        let before = config_step()["at"].clone();
        d.write_config(trust);
        wait_for("the configuration attempt", || {
            config_step()["at"] != before
        });
        config_step()
    };
    let new_key = KeyPair::generate("team-2027").expect("key");
    let with_new = format!(
        "{}[[trust.keys]]\nid = \"team-2027\"\npublic_key = \"{}\"\n",
        keys.trust(),
        new_key.public().hex()
    );

    // Revoking the key that signed what serves is refused whole.
    let revoke = |t: &str| t.replace("revoked = [\"old\"]", "revoked = [\"old\", \"team\"]");
    let attempt = reconfigure(&revoke(&keys.trust()));
    assert_eq!(attempt["step"], "verify", "{attempt}");
    assert!(
        attempt["error"]
            .as_str()
            .is_some_and(|e| e.contains("`team`, which is revoked")),
        "{attempt}"
    );
    assert_eq!(decide(server.addr)["policies"][0]["signer"], "team");

    // Rotate: trust the new key, re-sign with it, then revoke the old one.
    let attempt = reconfigure(&with_new);
    assert_eq!(attempt["error"], Value::Null, "{attempt}");
    replace_by_rename(&d.path("p.wasm.sig"), &sign(&new_key, "p", &allow));
    wait_for("the re-signed version", || {
        decide(server.addr)["policies"][0]["signer"] == "team-2027"
    });
    let attempt = reconfigure(&revoke(&with_new));
    assert_eq!(attempt["error"], Value::Null, "{attempt}");
    // A module signed by the revoked key is now refused.
    replace_by_rename(&d.path("p.wasm.sig"), &sign(&keys.team, "p", &allow));
    wait_for("the refusal", || {
        server.policy_status()["last_error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("`team`, which is revoked"))
    });
    assert_eq!(decide(server.addr)["policies"][0]["signer"], "team-2027");
}

#[test]
fn unsigned_policies_load_when_signatures_are_not_required_but_bad_ones_do_not() {
    let keys = Keys::new();
    let allow = allow_bytes();
    let d = Deployment::new(&keys, &allow, None);
    d.write_config(
        &keys
            .trust()
            .replace("require_signatures = true", "require_signatures = false"),
    );
    let server = Server::start_file(&d.config());
    assert_eq!(decide(server.addr)["policies"][0]["signer"], Value::Null);
    // A signature that is present is checked all the same.
    let deny = deny_bytes();
    d.deploy(&deny, Some(&sign(&keys.stranger, "p", &deny)));
    wait_for("the refusal", || {
        server.policy_status()["last_error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not trusted"))
    });
    assert_eq!(decide(server.addr)["outcome"], "allow");
}
