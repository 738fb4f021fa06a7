//! A small HTTP/1.1 client for the commands that talk to a running server
//! (`arbiter rollback`, `arbiter status`): its admin plane's Unix socket
//! (`unix:PATH`), `http://` or `https://`, JSON in and out.

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use std::sync::Arc;
use tokio::net::{TcpStream, UnixStream};

/// Header a gateway can use instead of `Authorization` to present its
/// Arbiter token, since the external authorizer reads `Authorization` as
/// part of the original request.
pub const TOKEN_HEADER: &str = "x-arbiter-token";

/// Where a server is and how to authenticate to it.
#[derive(Debug, Clone)]
pub struct ServerAddress {
    authority: String,
    /// The Unix socket to connect to, instead of `authority`.
    socket: Option<std::path::PathBuf>,
    /// For `https://`: the host name the certificate must carry, and the
    /// client configuration that checks it.
    tls: Option<(ServerName<'static>, Arc<rustls::ClientConfig>)>,
    token: Option<String>,
}

impl ServerAddress {
    /// Parses `http://host:port`, `https://host:port` or `unix:PATH`;
    /// `token` is sent as a bearer token. Over `https://` the server's
    /// certificate must chain to Mozilla's roots or to a certificate in
    /// `ca` (a PEM file).
    ///
    /// # Errors
    /// When the URL is none of those, or `ca` cannot be read.
    pub fn new(
        url: &str,
        token: Option<String>,
        ca: Option<&std::path::Path>,
    ) -> anyhow::Result<Self> {
        if let Some(path) = url.strip_prefix("unix:") {
            if path.is_empty() {
                bail!("`{url}`: `unix:` needs the socket's path");
            }
            return Ok(ServerAddress {
                authority: "localhost".into(),
                socket: Some(path.into()),
                tls: None,
                token,
            });
        }
        let uri: Uri = url
            .parse()
            .with_context(|| format!("`{url}` is not a URL"))?;
        let (https, default_port) = match uri.scheme_str() {
            Some("http") => (false, 80),
            Some("https") => (true, 443),
            _ => bail!("`{url}`: the address must be http://, https:// or unix:"),
        };
        let Some(authority) = uri.authority() else {
            bail!("`{url}` has no host");
        };
        let tls = if https {
            let host = authority
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']');
            let name = ServerName::try_from(host.to_owned())
                .with_context(|| format!("`{url}`: `{host}` is not a host name"))?;
            let config = crate::tls::client_config(ca).map_err(anyhow::Error::msg)?;
            Some((name, Arc::new(config)))
        } else {
            None
        };
        let authority = match authority.port() {
            Some(_) => authority.to_string(),
            None => format!("{}:{default_port}", authority.host()),
        };
        Ok(ServerAddress {
            authority,
            socket: None,
            tls,
            token,
        })
    }

    /// Sends one request and returns the status and the JSON body.
    ///
    /// # Errors
    /// When the server cannot be reached or does not answer JSON.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        let (mut sender, conn) = match &self.socket {
            Some(path) => {
                let stream = UnixStream::connect(path)
                    .await
                    .with_context(|| format!("cannot reach the admin socket {}", path.display()))?;
                handshake(stream).await?
            }
            None => {
                let stream = TcpStream::connect(&self.authority)
                    .await
                    .with_context(|| format!("cannot reach the server at {}", self.authority))?;
                match &self.tls {
                    None => handshake(stream).await?,
                    Some((name, config)) => {
                        let stream = tokio_rustls::TlsConnector::from(Arc::clone(config))
                            .connect(name.clone(), stream)
                            .await
                            .with_context(|| {
                                format!("TLS with {} (is $ARBITER_ADMIN_CA set?)", self.authority)
                            })?;
                        handshake(stream).await?
                    }
                }
            }
        };
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, &self.authority);
        if let Some(t) = &self.token {
            req = req.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        let payload = match body {
            Some(b) => {
                req = req.header(CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(b)?)
            }
            None => Bytes::new(),
        };
        let response = sender
            .send_request(req.body(Full::new(payload))?)
            .await
            .with_context(|| format!("request to {}{path}", self.authority))?;
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await?.to_bytes();
        conn.abort();
        let json = serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "the server answered {status} with a body that is not JSON: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            )
        })?;
        Ok((status, json))
    }
}

type Connection = (
    hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    tokio::task::JoinHandle<hyper::Result<()>>,
);

/// HTTP/1.1 over `stream`, its connection driven by a task of its own.
async fn handshake<S>(stream: S) -> anyhow::Result<Connection>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP handshake")?;
    Ok((sender, tokio::spawn(conn)))
}

/// The server's error message from an error body, or the whole body.
pub fn error_message(body: &serde_json::Value) -> String {
    body["error"]["message"]
        .as_str()
        .map_or_else(|| body.to_string(), str::to_owned)
}

/// Percent-encodes everything but unreserved characters, for a query value.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
