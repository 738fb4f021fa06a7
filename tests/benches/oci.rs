//! What a policy from an OCI registry costs, on a real registry (Debian's
//! `docker-registry`) on loopback, the procurement policy signed: a tag
//! check (what each poll costs), a pull into an empty store (manifest and
//! both blobs, each checked against its digest), and the load pipeline on
//! the pulled artifact with an empty compile cache (a first start) and a
//! warm one (a restart, or a tag moved back). Medians of each.
//!
//! `cargo bench -p arbiter-tests --bench oci`

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arbiter::config::{TrustConfig, TrustedKey};
use arbiter::load::{self, CompileCache, PolicySpec, Source};
use arbiter::oci::{Artifact, OciConfig, RegistryClient, RegistryConfig, Store};
use arbiter::signing::KeyPair;
use arbiter_tests::engine;
use arbiter_tests::registry::OciRegistry;

const CHECKS: usize = 50;
const PULLS: usize = 20;
const COLD_LOADS: usize = 5;
const WARM_LOADS: usize = 20;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let registry = OciRegistry::start(None, false);
    let mut oci = OciConfig::default();
    oci.registries.push(RegistryConfig {
        plain_http: true,
        ..RegistryConfig::anonymous(&registry.host())
    });
    let reference = format!("{}/policies/procurement:1", registry.host());
    let Some(Source::Bytes { bytes, .. }) = arbiter::examples::source("procurement") else {
        panic!("the embedded procurement example");
    };
    let key = KeyPair::generate("bench").expect("key");
    let signature = key
        .sign("procurement", "1.0.0", &bytes, SystemTime::now())
        .expect("sign");
    let artifact = Artifact {
        component: bytes.to_vec(),
        signature: Some(signature.to_json().into_bytes()),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let client = RegistryClient::new(&oci, &reference).expect("client");
    runtime
        .block_on(client.push(&artifact, "procurement", "1.0.0"))
        .expect("push");

    let checks = (0..CHECKS)
        .map(|_| {
            let start = Instant::now();
            runtime.block_on(client.resolve()).expect("resolve");
            start.elapsed()
        })
        .collect();
    let dirs: Vec<tempfile::TempDir> = (0..PULLS)
        .map(|_| tempfile::tempdir().expect("dir"))
        .collect();
    let mut pulled = None;
    let pulls = dirs
        .iter()
        .map(|d| {
            let store = Store::open(d.path()).expect("store");
            let start = Instant::now();
            // A client per pull, as the poll makes: its token and
            // connection are part of the cost.
            let client = RegistryClient::new(&oci, &reference).expect("client");
            let p = runtime.block_on(client.pull(&store)).expect("pull");
            let took = start.elapsed();
            assert!(!p.cached);
            pulled = Some(p);
            took
        })
        .collect();
    let pulled = pulled.expect("pulled");

    let engine = engine();
    let spec = PolicySpec {
        name: "procurement".into(),
        source: Source::Oci {
            reference: reference.clone(),
            digest: pulled.digest.clone(),
            component: pulled.stored.component.clone(),
        },
        settings: serde_json::json!({}),
        limits: Default::default(),
        smoke: Vec::new(),
        trust: Arc::new(TrustConfig {
            require_signatures: true,
            keys: vec![TrustedKey {
                id: "bench".into(),
                public_key: key.public().hex(),
                policies: vec!["*".into()],
            }],
            ..TrustConfig::default()
        }),
    };
    let cold = (0..COLD_LOADS)
        .map(|_| {
            let dir = tempfile::tempdir().expect("dir");
            let cache = CompileCache::open(dir.path().join("cache")).expect("cache");
            let start = Instant::now();
            let loaded = load::load(&engine, Some(&cache), &spec).expect("load");
            let took = start.elapsed();
            assert!(loaded.signer.is_some());
            took
        })
        .collect();
    let dir = tempfile::tempdir().expect("dir");
    let cache = CompileCache::open(dir.path().join("cache")).expect("cache");
    load::load(&engine, Some(&cache), &spec).expect("fill the cache");
    let warm = (0..WARM_LOADS)
        .map(|_| {
            let start = Instant::now();
            load::load(&engine, Some(&cache), &spec).expect("load");
            start.elapsed()
        })
        .collect();

    println!(
        "OCI policy: procurement, {} KiB component, signed, docker-registry {} on loopback",
        artifact.component.len() / 1024,
        registry.host()
    );
    println!(
        "  tag check (HEAD manifest)         median {:>9.2?}  ({CHECKS} runs)",
        median(checks)
    );
    println!(
        "  pull into an empty store          median {:>9.2?}  ({PULLS} runs)",
        median(pulls)
    );
    println!(
        "  load, empty compile cache         median {:>9.2?}  ({COLD_LOADS} runs)",
        median(cold)
    );
    println!(
        "  load, warm compile cache          median {:>9.2?}  ({WARM_LOADS} runs)",
        median(warm)
    );
}
