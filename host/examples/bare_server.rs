//! The baseline for `scripts/bench-http`: a minimal hyper server that reads
//! each request body and answers a fixed JSON decision, with the same
//! runtime, allocator, HTTP/1 settings and socket options as `arbiter serve`, so the
//! difference is the decision itself.
//!
//! `cargo run --release -p arbiter --example bare_server -- 127.0.0.1:8081`

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Response;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

// The same allocator as the `arbiter` binary, for a like-for-like baseline.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BODY: &str = r#"{"decision_id":"01a1fe34-1ebc-71ce-ac62-8ba63d881fcd","outcome":"allow","reason":"No procurement rule forbids this action.","rule":"default.allow","risk":0,"policies":[{"name":"procurement","version":"sha256:a1bc76600b0e450c3a6c527aa21a36682ed7ad9ecddda69fb3b595edfaceef3c","outcome":"allow","rule":"default.allow","reason":"No procurement rule forbids this action.","risk":0,"fuel":19001,"micros":9}],"micros":10}"#;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8081".into());
    let listener = TcpListener::bind(&addr).await?;
    eprintln!("bare server on http://{}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                let _ = req.into_body().collect().await;
                let mut r = Response::new(Full::new(Bytes::from_static(BODY.as_bytes())));
                r.headers_mut().insert(
                    "content-type",
                    hyper::header::HeaderValue::from_static("application/json"),
                );
                Ok::<_, Infallible>(r)
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
