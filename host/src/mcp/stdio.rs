//! The stdio transport: Arbiter spawns the MCP server, speaks
//! newline-delimited JSON-RPC to it on its stdin and stdout, and the same
//! to the client that launched Arbiter on Arbiter's own stdin and stdout.
//! The server's stderr is Arbiter's (the client's log). Each direction has
//! one writer, so messages never interleave; a governed call is decided on
//! its own task, so a call held for approval holds nothing else.
//!
//! Hostile input never wedges the proxy: a line that is not JSON, not
//! JSON-RPC or over `max_message_bytes` from the client is answered with
//! an error and not forwarded; from the server it is dropped and the
//! client told with a logging notification. When the server exits, every
//! request still waiting gets an error naming the exit, and the proxy
//! exits with the server's status.

use std::ffi::OsString;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;

use super::{Caller, FromClient, Gateway, Session, jsonrpc};

/// Why the stdio proxy stopped before the server did.
#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    /// The command could not be started.
    #[error("cannot start the MCP server `{command}`: {problem}")]
    Spawn {
        /// The command.
        command: String,
        /// The OS error.
        problem: String,
    },
    /// No command was given.
    #[error("no MCP server command given: `arbiter mcp stdio -- COMMAND ARGS...`")]
    NoCommand,
}

/// One line read with a bound.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A whole line, without its newline.
    Text(Vec<u8>),
    /// A line over the bound, skipped through its newline: its length and
    /// its first and last bytes (up to [`KEEP`] each), where an id may be.
    TooLong {
        /// Bytes in the line.
        len: usize,
        /// Its first bytes.
        head: Vec<u8>,
        /// Its last bytes.
        tail: Vec<u8>,
    },
    /// End of input.
    End,
}

/// How many bytes of each end of an over-long line are kept.
pub const KEEP: usize = 256;

/// Reads one line of at most `max` bytes; a longer one is consumed and
/// reported, never held in memory whole.
///
/// # Errors
/// The reader's I/O error.
pub async fn read_line(r: &mut (impl AsyncBufRead + Unpin), max: usize) -> std::io::Result<Line> {
    let mut line = Vec::new();
    // Once over the bound: the bytes seen, the first and the last ones.
    let mut over: Option<(usize, Vec<u8>, Vec<u8>)> = None;
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Ok(match over {
                Some((len, head, tail)) => Line::TooLong { len, head, tail },
                None if line.is_empty() => Line::End,
                None => Line::Text(line),
            });
        }
        let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], Some(i + 1)),
            None => (buf, None),
        };
        if over.is_none() && line.len() + chunk.len() > max {
            let head = line.iter().take(KEEP).copied().collect();
            over = Some((line.len(), head, std::mem::take(&mut line)));
        }
        match &mut over {
            Some((len, head, tail)) => {
                *len += chunk.len();
                if head.len() < KEEP {
                    head.extend(chunk.iter().take(KEEP - head.len()));
                }
                tail.extend_from_slice(chunk);
                let cut = tail.len().saturating_sub(KEEP);
                tail.drain(..cut);
            }
            None => line.extend_from_slice(chunk),
        }
        let used = done.unwrap_or(buf.len());
        r.consume(used);
        if done.is_some() {
            if let Some((len, head, tail)) = over {
                return Ok(Line::TooLong { len, head, tail });
            }
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Ok(Line::Text(line));
        }
    }
}

/// The environment of a stdio server: the `pass_env` variables Arbiter
/// has, then the entry's `env`. Never one of Arbiter's own (`ARBITER_*`),
/// whatever the entry says.
pub fn server_env(server: &crate::config::McpServerConfig) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = server
        .pass_env
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| (k.clone(), v)))
        .collect();
    env.extend(server.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.retain(|(k, _)| !k.starts_with("ARBITER_"));
    env
}

/// Runs `command` as the MCP server behind `gateway`, with the client on
/// `client_in` and `client_out`, until either side ends; returns the
/// server's exit status.
///
/// # Errors
/// A [`StdioError`] when the server cannot be started.
pub async fn run(
    gateway: Gateway,
    command: &[OsString],
    client_in: impl AsyncRead + Unpin + Send + 'static,
    client_out: impl AsyncWrite + Unpin + Send + 'static,
) -> Result<ExitStatus, StdioError> {
    let (program, args) = command.split_first().ok_or(StdioError::NoCommand)?;
    let mut child = Command::new(program)
        .args(args)
        // The governed server gets nothing of Arbiter's: an empty
        // environment, then the variables its entry passes or sets.
        .env_clear()
        .envs(server_env(gateway.server()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| StdioError::Spawn {
            command: program.to_string_lossy().into_owned(),
            problem: e.to_string(),
        })?;
    let (Some(child_in), Some(child_out)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(StdioError::Spawn {
            command: program.to_string_lossy().into_owned(),
            problem: "no pipes to the child".into(),
        });
    };
    let gateway = Arc::new(gateway);
    let session = Arc::new(Session::new(uuid::Uuid::now_v7().to_string()));
    let max = gateway.server().max_message_bytes;
    let name = gateway.server().name.clone();
    let (to_client, client_rx) = mpsc::channel::<Value>(256);
    let (to_server, server_rx) = mpsc::channel::<Value>(256);
    let client_writer = tokio::spawn(write_all(client_out, client_rx));
    let server_writer = tokio::spawn(write_all(child_in, server_rx));

    let caller = Caller::default();
    // The server's requests the gateway refuses are answered on its stdin,
    // while the client is there: its hang-up still closes that stdin.
    let to_server_replies = to_server.downgrade();
    // Decided requests wait for their decision on tasks of their own, at
    // most MAX_PENDING at once: more are refused, not queued.
    let deciding = Arc::new(tokio::sync::Semaphore::new(super::MAX_PENDING));

    // Client → server.
    let upstream = {
        let (caller, deciding) = (caller.clone(), Arc::clone(&deciding));
        let (gateway, session, to_client) = (
            Arc::clone(&gateway),
            Arc::clone(&session),
            to_client.clone(),
        );
        tokio::spawn(async move {
            let mut input = BufReader::new(client_in);
            loop {
                let msg = match read_line(&mut input, max).await {
                    Ok(Line::End) | Err(_) => break,
                    Ok(Line::TooLong { len, .. }) => {
                        gateway.count("client-invalid", 1);
                        let _ = to_client.send(too_long(len, max)).await;
                        continue;
                    }
                    Ok(Line::Text(t)) if t.iter().all(u8::is_ascii_whitespace) => continue,
                    Ok(Line::Text(t)) => match serde_json::from_slice::<Value>(&t) {
                        Ok(v) => v,
                        Err(e) => {
                            gateway.count("client-invalid", 1);
                            let _ = to_client.send(not_json(&e)).await;
                            continue;
                        }
                    },
                };
                let governed = match jsonrpc::kind(&msg) {
                    jsonrpc::Kind::Request { method, id } => {
                        let decided = super::methods::treatment(
                            gateway.server(),
                            super::methods::Direction::ToServer,
                            method,
                        ) == super::methods::Treatment::Decided;
                        decided.then(|| id.clone())
                    }
                    _ => None,
                };
                let step = {
                    let (gateway, session, caller) =
                        (Arc::clone(&gateway), Arc::clone(&session), caller.clone());
                    let (to_client, to_server) = (to_client.clone(), to_server.clone());
                    async move {
                        match gateway.from_client(&session, &caller, msg).await {
                            FromClient::Forward(m) => {
                                let _ = to_server.send(m).await;
                            }
                            FromClient::Reply(m) => {
                                let _ = to_client.send(m).await;
                            }
                        }
                    }
                };
                match governed {
                    Some(id) => match Arc::clone(&deciding).try_acquire_owned() {
                        Ok(slot) => {
                            tokio::spawn(async move {
                                step.await;
                                drop(slot);
                            });
                        }
                        Err(_) => {
                            gateway.count("client-invalid", 1);
                            let busy = jsonrpc::error(
                                id,
                                jsonrpc::INVALID_REQUEST,
                                format!(
                                    "Arbiter: {} requests are already being decided; refused",
                                    super::MAX_PENDING
                                ),
                                None,
                            );
                            let _ = to_client.send(busy).await;
                        }
                    },
                    None => step.await,
                }
            }
            // The client hung up: closing the server's stdin asks it to exit.
            drop(to_server);
        })
    };

    // Server → client, until the server closes its stdout.
    let mut output = BufReader::new(child_out);
    loop {
        let msg = match read_line(&mut output, max).await {
            Ok(Line::End) | Err(_) => break,
            Ok(Line::TooLong { len, head, tail }) => {
                tracing::error!(server = %name, bytes = len, "the MCP server sent a message over the limit; dropped");
                gateway.count("server-invalid", 1);
                let problem = format!(
                    "it sent a message of {len} bytes, over the limit of {max} (`max_message_bytes`)"
                );
                // An answer too big to read still answers its request.
                let answered = jsonrpc::id_hint(&head, &tail)
                    .filter(|id| session.is_pending(id))
                    .map(|id| session.fail_pending(&name, &problem, Some(&[id])));
                let out = match answered {
                    Some(errors) => errors,
                    None => vec![jsonrpc::log_notification(
                        &name,
                        &format!("{problem}; dropped"),
                    )],
                };
                for m in out {
                    let _ = to_client.send(m).await;
                }
                continue;
            }
            Ok(Line::Text(t)) if t.iter().all(u8::is_ascii_whitespace) => continue,
            Ok(Line::Text(t)) => match serde_json::from_slice::<Value>(&t) {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!(server = %name, error = %e, "the MCP server sent a line that is not JSON; dropped");
                    gateway.count("server-invalid", 1);
                    let _ = to_client
                        .send(jsonrpc::log_notification(
                            &name,
                            &format!("a line that is not JSON was dropped ({e})"),
                        ))
                        .await;
                    continue;
                }
            },
        };
        let (out, replies) = gateway.from_server_all(&session, &caller, msg).await;
        if let Some(to_server) = to_server_replies.upgrade() {
            for reply in replies {
                let _ = to_server.send(reply).await;
            }
        }
        if let Some(out) = out
            && to_client.send(out).await.is_err()
        {
            break;
        }
    }
    // The server closed its output: it is gone or going.
    let status = match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
        Ok(Ok(s)) => s,
        _ => {
            let _ = child.kill().await;
            child.wait().await.map_err(|e| StdioError::Spawn {
                command: program.to_string_lossy().into_owned(),
                problem: e.to_string(),
            })?
        }
    };
    let unanswered = session.fail_pending(
        &name,
        &format!("the server exited ({status}) before answering"),
        None,
    );
    gateway.count("upstream-failed", unanswered.len());
    for m in unanswered {
        let _ = to_client.send(m).await;
    }
    upstream.abort();
    drop(to_client);
    // What was sent is written; a call still held for approval keeps a
    // sender, and is not waited for.
    let _ = tokio::time::timeout(Duration::from_secs(2), client_writer).await;
    server_writer.abort();
    Ok(status)
}

fn too_long(n: usize, max: usize) -> Value {
    jsonrpc::error(
        Value::Null,
        jsonrpc::INVALID_REQUEST,
        format!(
            "Arbiter: a message of {n} bytes is over the limit of {max} (`max_message_bytes`); refused"
        ),
        None,
    )
}

fn not_json(e: &serde_json::Error) -> Value {
    jsonrpc::error(
        Value::Null,
        jsonrpc::PARSE_ERROR,
        format!("Arbiter: the message is not JSON: {e}"),
        None,
    )
}

/// Writes each message as one line, flushing after each.
async fn write_all(mut out: impl AsyncWrite + Unpin, mut rx: mpsc::Receiver<Value>) {
    while let Some(m) = rx.recv().await {
        let mut line = match serde_json::to_vec(&m) {
            Ok(l) => l,
            Err(_) => continue,
        };
        line.push(b'\n');
        if out.write_all(&line).await.is_err() || out.flush().await.is_err() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_bounded_and_a_long_one_is_skipped_whole() {
        let input = b"{\"a\":1}\r\n0123456789abcdef\nok\nlast".to_vec();
        let mut r = BufReader::with_capacity(4, &input[..]);
        assert_eq!(
            read_line(&mut r, 10).await.expect("ok"),
            Line::Text(b"{\"a\":1}".to_vec())
        );
        assert_eq!(
            read_line(&mut r, 10).await.expect("ok"),
            Line::TooLong {
                len: 16,
                head: b"0123456789abcdef".to_vec(),
                tail: b"0123456789abcdef".to_vec()
            }
        );
        assert_eq!(
            read_line(&mut r, 10).await.expect("ok"),
            Line::Text(b"ok".to_vec())
        );
        assert_eq!(
            read_line(&mut r, 10).await.expect("ok"),
            Line::Text(b"last".to_vec())
        );
        assert_eq!(read_line(&mut r, 10).await.expect("ok"), Line::End);
    }
}
