//! Policies from a real OCI registry (Debian's `docker-registry`, started
//! by the tests): published with `arbiter push`, pulled and verified by a
//! real server that follows the tag, serves from its store with the
//! registry down, and refuses tampered, untrusted and unsigned artifacts
//! with the old version still serving; with and without basic auth and TLS.

use std::path::{Path, PathBuf};
use std::process::Command;

use arbiter::config::{Config, PolicyConfig, TrustedKey};
use arbiter::oci::RegistryConfig;
use arbiter::signing::KeyPair;
use arbiter_tests::registry::OciRegistry;
use arbiter_tests::{
    Server, artifacts, binary, decide, refused, route_all, server_config, wait_for,
};
use serde_json::Value;

/// A key pair written as `arbiter keygen` writes it: `ID.key` owner-only.
fn key(dir: &Path, id: &str) -> (KeyPair, PathBuf) {
    let pair = KeyPair::generate(id).expect("key");
    let path = dir.join(format!("{id}.key"));
    std::fs::write(&path, pair.private_file()).expect("write key");
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    std::fs::write(dir.join(format!("{id}.pub")), pair.public().file()).expect("write pub");
    (pair, path)
}

/// `arbiter` run with `args` (and `env`); its status and output.
fn run(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(binary::arbiter())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run arbiter");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `arbiter push` of `component` signed by `key` (unsigned without) as
/// policy `name`; the digest it printed.
fn push(
    component: &str,
    key: Option<&Path>,
    name: &str,
    reference: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Result<String, String> {
    let mut args = vec!["push", "--name", name, "--version", "1.0.0"];
    let key = key.map(|k| k.display().to_string());
    match &key {
        Some(k) => args.extend(["--key", k.as_str()]),
        None => args.push("--unsigned"),
    }
    args.extend(extra);
    args.extend([component, reference]);
    let (ok, text) = run(&args, env);
    if !ok {
        return Err(text);
    }
    let digest = text.trim().rsplit(' ').next().expect("a digest").to_owned();
    assert!(digest.starts_with("sha256:"), "{text}");
    Ok(digest)
}

/// A server configuration serving policy `gate` from `reference`, trusting
/// `team` only, its store in `store`, the tag checked every second.
fn config(reference: &str, store: &Path, team: &KeyPair, registry: RegistryConfig) -> Config {
    let mut config = server_config(&[]);
    let mut policy = PolicyConfig::new("gate", None, None);
    policy.oci = Some(reference.to_owned());
    config.policies.push(policy);
    config.routes = vec![route_all(&["gate"])];
    config.oci.store = Some(store.to_owned());
    config.oci.poll_s = 1;
    config.oci.registries.push(registry);
    config.trust.require_signatures = true;
    config.trust.keys.push(TrustedKey {
        id: "team".into(),
        public_key: team.public().hex(),
        policies: vec!["*".into()],
    });
    config
}

fn plain(registry: &OciRegistry) -> RegistryConfig {
    RegistryConfig {
        plain_http: true,
        ..RegistryConfig::anonymous(&registry.host())
    }
}

/// A plain-HTTP registry, a trusted key `team`, and the tag `gate:live`
/// a server follows.
struct Plain {
    registry: OciRegistry,
    dir: tempfile::TempDir,
    team: KeyPair,
    team_key: PathBuf,
    tag: String,
}

impl Plain {
    fn new() -> Self {
        let registry = OciRegistry::start(None, false);
        let dir = tempfile::tempdir().expect("dir");
        let (team, team_key) = key(dir.path(), "team");
        let tag = format!("{}/policies/gate:live", registry.host());
        Plain {
            registry,
            dir,
            team,
            team_key,
            tag,
        }
    }

    /// `arbiter push` to `reference` (the tag when `None`).
    fn push(
        &self,
        component: &str,
        key: Option<&Path>,
        name: &str,
        reference: Option<&str>,
    ) -> String {
        let reference = reference.unwrap_or(&self.tag);
        push(component, key, name, reference, &["--plain-http"], &[]).expect("push")
    }

    /// A server following the tag, its store in the fixture's directory.
    fn config(&self) -> Config {
        let store = self.dir.path().join("store");
        config(&self.tag, &store, &self.team, plain(&self.registry))
    }
}

fn outcome(server: &Server) -> String {
    decide(server.addr)["outcome"]
        .as_str()
        .expect("outcome")
        .to_owned()
}

fn status(server: &Server) -> Value {
    server.policy_status()
}

#[test]
fn a_policy_follows_its_tag_and_serves_from_the_store_with_the_registry_down() {
    let mut f = Plain::new();
    let (tag, team_key) = (f.tag.clone(), f.team_key.clone());
    let first = f.push(artifacts::VERDICT_ALLOW, Some(&team_key), "gate", None);
    let config = f.config();
    let server = Server::start(config.clone(), Default::default());
    assert_eq!(outcome(&server), "allow");
    let s = status(&server);
    assert_eq!(s["source"], format!("oci:{tag}@{first}"), "{s}");
    assert_eq!(s["signer"]["key_id"], "team", "{s}");

    // The tag moves: the poll pulls the new artifact and reloads.
    let second = f.push(artifacts::VERDICT_DENY, Some(&team_key), "gate", None);
    wait_for("the tag's new digest to serve", || {
        outcome(&server) == "deny"
    });
    let moved: Vec<Value> = server
        .records("admin")
        .into_iter()
        .filter(|r| r["change"] == "policy-oci")
        .collect();
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert_eq!(moved[0]["from_digest"], first.as_str());
    assert_eq!(moved[0]["to_digest"], second.as_str());
    assert_eq!(moved[0]["reference"], tag.as_str());
    assert_eq!(moved[0]["actor"], "oci-poll");
    server.stop().expect("stop");

    // The registry goes down; a restart serves what served, from the store.
    f.registry.kill();
    let server = Server::start(config, Default::default());
    assert_eq!(outcome(&server), "deny");
    assert_eq!(status(&server)["source"], format!("oci:{tag}@{second}"));
    server.stop().expect("stop");

    // A digest reference never moves, and `arbiter pull` verifies it.
    f.registry.resume();
    let pinned = format!("{}/policies/gate@{first}", f.registry.host());
    let out = f.dir.path().join("pulled.wasm");
    let out_arg = out.display().to_string();
    let team_pub = f.dir.path().join("team.pub").display().to_string();
    let pull = [
        "pull",
        "--plain-http",
        "--key",
        &team_pub,
        "--out",
        &out_arg,
        &pinned,
    ];
    let (ok, text) = run(&pull, &[]);
    assert!(ok, "{text}");
    assert!(text.contains("signed by `team`"), "{text}");
    assert_eq!(
        std::fs::read(&out).expect("pulled"),
        std::fs::read(artifacts::VERDICT_ALLOW).expect("component")
    );
    assert!(f.dir.path().join("pulled.wasm.sig").is_file());
}

#[test]
fn refused_artifacts_leave_the_old_version_serving() {
    let f = Plain::new();
    let team_key = f.team_key.clone();
    let (_, stranger_key) = key(f.dir.path(), "stranger");
    f.push(artifacts::VERDICT_ALLOW, Some(&team_key), "gate", None);
    let server = Server::start(f.config(), Default::default());
    let serving = status(&server)["version"].clone();
    assert!(serving.is_string());
    assert_eq!(outcome(&server), "allow");

    // Each attack moves the tag; the poll must refuse what it names, and
    // the version that served keeps serving.
    let moved_to = |what: &str, expect: &str, push: &dyn Fn()| {
        let before = status(&server)["last_attempt"].clone();
        push();
        wait_for(what, || {
            let s = status(&server);
            s["last_attempt"] != before
                && s["last_attempt"]["error"]
                    .as_str()
                    .is_some_and(|e| e.contains(expect))
        });
        let s = status(&server);
        let still = s["version"] == serving && outcome(&server) == "allow";
        refused(what, still, s);
    };

    // A blob altered in the registry's storage after it was pushed: the
    // component is staged under another tag, edited on disk, then tagged.
    let staging = format!("{}/policies/gate:staging", f.registry.host());
    f.push(
        artifacts::VERDICT_DENY,
        Some(&team_key),
        "gate",
        Some(&staging),
    );
    let deny = std::fs::read(artifacts::VERDICT_DENY).expect("component");
    let blob = f.registry.blob_path(&arbiter::load::version_of(&deny));
    let mut tampered = std::fs::read(&blob).expect("blob");
    let last = tampered.len() - 1;
    tampered[last] ^= 0xff;
    std::fs::write(&blob, &tampered).expect("tamper");
    moved_to("a blob tampered with in the registry", "altered", &|| {
        f.push(artifacts::VERDICT_DENY, Some(&team_key), "gate", None);
    });
    moved_to(
        "an artifact signed by an untrusted key",
        "not trusted",
        &|| {
            f.push(artifacts::MISBEHAVE, Some(&stranger_key), "gate", None);
        },
    );
    moved_to(
        "an artifact signed for another policy",
        "signed as policy `other`",
        &|| {
            f.push(artifacts::MISBEHAVE, Some(&team_key), "other", None);
        },
    );
    moved_to("a tag moved to an unsigned artifact", "unsigned", &|| {
        f.push(artifacts::MISBEHAVE, None, "gate", None);
    });

    // The serving version was never replaced.
    assert!(
        server
            .records("admin")
            .iter()
            .all(|r| r["change"] != "policy-oci"),
        "a refused artifact was put in service"
    );
    server.stop().expect("stop");
}

#[test]
fn basic_auth_and_tls_registries() {
    let registry = OciRegistry::start(Some(("ci", "s3cret-pass")), true);
    let dir = tempfile::tempdir().expect("dir");
    let (team, team_key) = key(dir.path(), "team");
    let tag = format!("{}/policies/gate:1", registry.host());
    let ca = registry.ca_file().display().to_string();
    let tls = ["--registry-ca", ca.as_str()];
    let with_user = ["--registry-ca", ca.as_str(), "--username", "ci"];

    let anonymous = push(
        artifacts::VERDICT_ALLOW,
        Some(&team_key),
        "gate",
        &tag,
        &tls,
        &[],
    );
    refused(
        "a push without credentials",
        anonymous
            .as_ref()
            .is_err_and(|e| e.contains("401") || e.to_lowercase().contains("unauthorized")),
        format!("{anonymous:?}"),
    );
    let wrong = push(
        artifacts::VERDICT_ALLOW,
        Some(&team_key),
        "gate",
        &tag,
        &with_user,
        &[("ARBITER_REGISTRY_PASSWORD", "guess")],
    );
    refused(
        "a push with a wrong password",
        wrong.is_err(),
        format!("{wrong:?}"),
    );
    let no_ca = push(
        artifacts::VERDICT_ALLOW,
        Some(&team_key),
        "gate",
        &tag,
        &["--username", "ci"],
        &[("ARBITER_REGISTRY_PASSWORD", "s3cret-pass")],
    );
    refused(
        "a registry whose certificate chains to an unknown CA",
        no_ca
            .as_ref()
            .is_err_and(|e| e.to_lowercase().contains("certificate")),
        format!("{no_ca:?}"),
    );
    push(
        artifacts::VERDICT_ALLOW,
        Some(&team_key),
        "gate",
        &tag,
        &with_user,
        &[("ARBITER_REGISTRY_PASSWORD", "s3cret-pass")],
    )
    .expect("push with credentials");

    // A server with the credentials (from a file) and the CA serves it.
    let password = dir.path().join("registry-password");
    std::fs::write(&password, "s3cret-pass\n").expect("write password");
    let signed_in = RegistryConfig {
        username: Some("ci".into()),
        password_file: Some(password),
        ca_file: Some(registry.ca_file()),
        ..RegistryConfig::anonymous(&registry.host())
    };
    let store = dir.path().join("store");
    let server = Server::start(config(&tag, &store, &team, signed_in), Default::default());
    assert_eq!(outcome(&server), "allow");
    server.stop().expect("stop");

    // Without credentials, a server with an empty store cannot start,
    // and says why.
    let bare = RegistryConfig {
        ca_file: Some(registry.ca_file()),
        ..RegistryConfig::anonymous(&registry.host())
    };
    let empty = dir.path().join("empty-store");
    let server = Server::bind(config(&tag, &empty, &team, bare), Default::default());
    let err = server.ready().expect_err("no credentials");
    refused(
        "a server without the registry's credentials",
        err.to_string().contains("pull failed"),
        &err,
    );

    // `arbiter pull` checks the signature against the key it is given.
    let stranger = key(dir.path(), "stranger");
    drop(stranger);
    let stranger_pub = dir.path().join("stranger.pub").display().to_string();
    let (ok, text) = run(
        &[
            "pull",
            "--registry-ca",
            &ca,
            "--username",
            "ci",
            "--key",
            &stranger_pub,
            &tag,
        ],
        &[("ARBITER_REGISTRY_PASSWORD", "s3cret-pass")],
    );
    refused(
        "a pull verified with the wrong key",
        !ok && text.contains("not trusted"),
        &text,
    );
}
