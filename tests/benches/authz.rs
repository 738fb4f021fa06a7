//! The external authorizer's two doors side by side, in one run, on one
//! server: `GET /v1/authz/…` over one HTTP/1.1 keep-alive connection, and
//! Envoy's gRPC `Check` over one HTTP/2 connection, each with hyper's
//! client, the request built from Envoy's own message types. Sequential
//! round trips, taken in alternating rounds so both see the same machine;
//! prints the median and p99 of each and their ratio.
//!
//! `cargo bench -p arbiter-tests --bench authz`

use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message as _;

const ROUNDS: usize = 20;
const PER_ROUND: usize = 250;

fn check_request() -> Bytes {
    let message = CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path: "/orders/allow".into(),
                    host: "shop.example".into(),
                    headers: [("x-agent-id".to_owned(), "buyer".to_owned())].into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
    .encode_to_vec();
    // gRPC's length-prefixed message: not compressed, then the length.
    let mut framed = BytesMut::with_capacity(message.len() + 5);
    framed.put_u8(0);
    framed.put_u32(u32::try_from(message.len()).expect("small"));
    framed.put_slice(&message);
    framed.freeze()
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let mut config = arbiter_tests::authorizer_config();
    config.authorizer.agent_header = Some("x-agent-id".into());
    config.authorizer.grpc_listen = Some("127.0.0.1:0".parse().expect("addr"));
    config.log.enabled = false;
    let server = arbiter_tests::Server::start(config, Default::default());
    let grpc = server.grpc_addr().expect("the gRPC authorizer");
    let http = server.addr;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (mut http_times, mut grpc_times) = runtime.block_on(async {
        let tcp = tokio::net::TcpStream::connect(http).await.expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        let (mut h1, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .expect("http/1.1");
        tokio::spawn(conn);
        let tcp = tokio::net::TcpStream::connect(grpc).await.expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        let (mut h2, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .expect("http/2");
        tokio::spawn(conn);
        let body = check_request();

        let http_once = async |h1: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>| {
            let request = hyper::Request::get("/v1/authz/orders/allow")
                .header("host", "shop.example")
                .header("x-agent-id", "buyer")
                .body(Empty::new())
                .expect("request");
            let start = Instant::now();
            let response = h1.send_request(request).await.expect("authz");
            let status = response.status();
            response.into_body().collect().await.expect("body");
            let took = start.elapsed();
            assert_eq!(status, 200, "/v1/authz did not allow");
            took
        };
        let grpc_once = async |h2: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>| {
            let request = hyper::Request::post(format!(
                "http://{grpc}/envoy.service.auth.v3.Authorization/Check"
            ))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(body.clone()))
            .expect("request");
            let start = Instant::now();
            let response = h2.send_request(request).await.expect("check");
            let collected = response.into_body().collect().await.expect("body");
            let took = start.elapsed();
            let status = collected
                .trailers()
                .and_then(|t| t.get("grpc-status"))
                .map(|v| v.as_bytes().to_vec());
            assert_eq!(status.as_deref(), Some(&b"0"[..]), "the call failed");
            let bytes = collected.to_bytes();
            let answer = CheckResponse::decode(&bytes[5..]).expect("a CheckResponse");
            assert_eq!(
                answer.status.map(|s| s.code),
                Some(0),
                "Check did not allow"
            );
            took
        };

        // Warm both paths (the policy's instances, the connections).
        for _ in 0..200 {
            http_once(&mut h1).await;
            grpc_once(&mut h2).await;
        }
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            for _ in 0..PER_ROUND {
                a.push(http_once(&mut h1).await);
            }
            for _ in 0..PER_ROUND {
                b.push(grpc_once(&mut h2).await);
            }
        }
        (a, b)
    });
    // The connections close with the client's runtime.
    drop(runtime);
    let (h50, h99) = (
        percentile(&mut http_times, 0.5),
        percentile(&mut http_times, 0.99),
    );
    let (g50, g99) = (
        percentile(&mut grpc_times, 0.5),
        percentile(&mut grpc_times, 0.99),
    );
    println!(
        "authorizer round trip, {} sequential calls each, one connection each, alternating rounds",
        ROUNDS * PER_ROUND
    );
    println!("  GET /v1/authz (HTTP/1.1)  median {h50:>9.1?}  p99 {h99:>9.1?}");
    println!("  gRPC Check (HTTP/2)       median {g50:>9.1?}  p99 {g99:>9.1?}");
    println!(
        "  Check / authz median ratio {:.2}",
        g50.as_secs_f64() / h50.as_secs_f64()
    );
    server.stop().expect("stop");
}
