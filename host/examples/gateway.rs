//! Arbiter embedded in a small Rust HTTP gateway for agent tool calls.
//!
//! The gateway takes `POST /tools/{name}` with the tool's JSON arguments and
//! the agent in `x-agent-id`, asks Arbiter in-process before anything runs,
//! and then refuses (403), parks the call for a person (202), or runs the
//! tool, with the arguments a `modify` decision produced.
//!
//! Run it with `cargo run --release -p arbiter --example gateway`: it starts
//! the gateway on a free loopback port, sends it a few tool calls as an
//! agent would, prints what happened to each and exits (non-zero if any
//! call was not handled as expected). `-- --serve` keeps it running.

use std::convert::Infallible;
use std::sync::Arc;

use arbiter::config::Config;
use arbiter::decision::{Action, Context, Principal, Request};
use arbiter::{Arbiter, Outcome};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // 1. One Arbiter for the process: engine, instance pool, policies.
    //    Here the embedded example policies; `Config::from_file` for yours.
    let config = Config::default_config()?;
    let arbiter = Arc::new(Arbiter::from_config(&config, std::path::Path::new("."))?);
    if let Some((name, e)) = arbiter.policy_set().failures().iter().next() {
        anyhow::bail!("policy {name} failed to load: {e}");
    }

    // 2. The gateway: a plain hyper server.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    println!("gateway on http://{addr}");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let arbiter = Arc::clone(&arbiter);
            tokio::spawn(async move {
                let service = service_fn(move |req| handle(Arc::clone(&arbiter), req));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    if std::env::args().any(|a| a == "--serve") {
        tokio::signal::ctrl_c().await?;
        return Ok(());
    }

    // 3. An agent's calls, and what must happen to each.
    let calls = [
        (
            "procurement-bot",
            "send_email",
            json!({"to": "bob@corp.example", "body": "PO 1182 is approved"}),
            200,
        ),
        (
            "procurement-bot",
            "send_email",
            json!({"to": "eve@evil.example", "body": "PO 1182"}),
            403,
        ),
        (
            "procurement-bot",
            "payments.transfer",
            json!({"amount": 12000}),
            202,
        ),
        (
            "procurement-bot",
            "send_email",
            json!({"to": "bob@corp.example", "body": "card 4111 1111 1111 1111"}),
            200,
        ),
    ];
    let mut unexpected = 0;
    for (agent, tool, args, want) in calls {
        let (status, body) = call(&addr.to_string(), agent, tool, &args).await?;
        println!("{tool:<18} {args}\n  -> {status} {body}");
        if status != want {
            println!("  !! expected {want}");
            unexpected += 1;
        }
    }
    anyhow::ensure!(
        unexpected == 0,
        "{unexpected} calls were not handled as expected"
    );
    Ok(())
}

/// The gateway's handler: decide first, then act on the decision.
async fn handle(
    arbiter: Arc<Arbiter>,
    req: hyper::Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let Some(tool) = req.uri().path().strip_prefix("/tools/").map(str::to_owned) else {
        return Ok(reply(
            StatusCode::NOT_FOUND,
            json!({"error": "POST /tools/{name}"}),
        ));
    };
    let agent = header(&req, "x-agent-id").unwrap_or_default();
    let session = header(&req, "x-session-id").unwrap_or_default();
    let args: Value = match req
        .into_body()
        .collect()
        .await
        .map(|b| serde_json::from_slice(&b.to_bytes()))
    {
        Ok(Ok(v)) => v,
        _ => {
            return Ok(reply(
                StatusCode::BAD_REQUEST,
                json!({"error": "the body must be JSON"}),
            ));
        }
    };
    let request = Request {
        trace: None,
        approval_id: None,
        action: Action {
            kind: "tool".into(),
            name: tool.clone(),
            target: String::new(),
            params: args.clone(),
        },
        context: Context {
            agent: Principal {
                id: agent,
                roles: vec!["procurement".into()],
            },
            environment: "prod".into(),
            session,
            ..Context::default()
        },
        history: Default::default(),
    };
    // Runs the policies on tokio's blocking pool; never fails: any problem
    // is a deny that says why.
    let decision = arbiter.decide_async(request).await;
    let id = decision.decision_id.clone();
    Ok(match decision.outcome {
        Outcome::Deny => reply(
            StatusCode::FORBIDDEN,
            json!({"decision_id": id, "rule": decision.rule, "reason": decision.reason}),
        ),
        Outcome::RequireApproval => reply(
            StatusCode::ACCEPTED,
            json!({"decision_id": id, "status": "waiting for approval", "reason": decision.reason}),
        ),
        Outcome::Allow | Outcome::Modify => {
            // With modify, the tool runs with the policy's arguments.
            let args = decision.params.unwrap_or(args);
            reply(
                StatusCode::OK,
                json!({"decision_id": id, "ran": tool, "with": args}),
            )
        }
    })
}

fn header(req: &hyper::Request<Incoming>, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r
}

/// A minimal HTTP/1.1 client call, as an agent SDK would make.
async fn call(addr: &str, agent: &str, tool: &str, args: &Value) -> anyhow::Result<(u16, String)> {
    let body = args.to_string();
    let mut s = TcpStream::connect(addr).await?;
    let head = format!(
        "POST /tools/{tool} HTTP/1.1\r\nHost: gateway\r\nx-agent-id: {agent}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(body.as_bytes()).await?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).await?;
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}
