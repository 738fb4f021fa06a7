//! `arbiter mcp`: the MCP gateway in front of a stdio server or a
//! Streamable HTTP server, and the tool definitions it pinned.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use serde_json::Value;

use super::{Global, RemoteArgs, call, overrides, read_state, remote, runtime, serve_config};
use crate::client::ServerAddress;
use crate::config::{Config, McpServerConfig};
use crate::mcp::Gateway;

#[derive(Debug, Subcommand)]
pub(super) enum McpCommand {
    /// Spawn a stdio MCP server and stand between it and the client that
    /// launched Arbiter (stdin and stdout are the client's).
    Stdio(StdioArgs),
    /// Serve the gateway for a Streamable HTTP MCP server on
    /// `http://LISTEN/mcp/NAME`.
    Http(HttpArgs),
    /// The tool definitions a running gateway pinned.
    #[command(subcommand)]
    Tools(ToolsCommand),
}

/// What both transports take.
#[derive(Debug, Args)]
pub(super) struct GatewayArgs {
    /// The server's name: the target of its actions, and its
    /// `[[mcp.servers]]` entry if the configuration has one.
    #[arg(long)]
    name: String,
    /// The configuration file (TOML); default: the embedded configuration.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The decision API listens here [default: the configured
    /// `server.listen`; with the embedded configuration, a free loopback
    /// port for stdio].
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<SocketAddr>,
    /// The admin plane listens here instead of the configured
    /// `admin.listen`: `unix:PATH` or `ADDR:PORT`.
    #[arg(long, value_name = "ADDRESS")]
    admin_listen: Option<crate::config::AdminListen>,
    /// Write the decision log here instead of the configured `log.dir`.
    #[arg(long, value_name = "DIR")]
    log_dir: Option<PathBuf>,
    /// Keep the durable state (pins, approvals) here instead of the
    /// configured `state.dir`.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(super) struct StdioArgs {
    #[command(flatten)]
    gateway: GatewayArgs,
    /// Ask this running decision service (`arbiter serve`) instead of
    /// loading policies here: its policies, log, approvals and tool pins
    /// serve every gateway that names it (token from $ARBITER_TOKEN). Only
    /// the `[[mcp.servers]]` entry of `--config` is read.
    #[arg(long, value_name = "URL", conflicts_with_all = ["listen", "admin_listen", "log_dir", "state_dir"])]
    server: Option<String>,
    /// The MCP server to run, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

#[derive(Debug, Args)]
pub(super) struct HttpArgs {
    #[command(flatten)]
    gateway: GatewayArgs,
    /// The server's Streamable HTTP endpoint, `http://host:port/path`.
    #[arg(long, value_name = "URL")]
    upstream: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(super) enum ToolsCommand {
    /// Every pinned tool, and which changed.
    List(ListArgs),
    /// Accept a changed tool's new definition (admin token): its calls are
    /// decided by the policies again.
    Accept(AcceptArgs),
}

#[derive(Debug, Args)]
pub(super) struct ListArgs {
    /// Print the server's JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    remote: RemoteArgs,
}

#[derive(Debug, Args)]
pub(super) struct AcceptArgs {
    /// The MCP server's name.
    #[arg(value_name = "SERVER")]
    mcp_server: String,
    /// The tool.
    tool: String,
    #[command(flatten)]
    remote: RemoteArgs,
}

pub(super) fn run(command: McpCommand, global: &Global) -> anyhow::Result<ExitCode> {
    match command {
        McpCommand::Stdio(args) => stdio(args, global),
        McpCommand::Http(args) => http(args, global),
        McpCommand::Tools(ToolsCommand::List(args)) => list(&args),
        McpCommand::Tools(ToolsCommand::Accept(args)) => accept(&args),
    }
}

/// The configuration with an entry for the named server.
fn configured(args: &GatewayArgs) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?.0,
        None => Config::default_config()?,
    };
    if config.mcp.server(&args.name).is_none() {
        config.mcp.servers.push(McpServerConfig {
            name: args.name.clone(),
            ..McpServerConfig::default()
        });
    }
    // The name must pass the same checks as a configured one.
    crate::config::check_mcp(&config.mcp).map_err(|e| anyhow::anyhow!("--name: {e}"))?;
    Ok(config)
}

fn stdio(args: StdioArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let g = &args.gateway;
    let config = configured(g)?;
    if let Some(url) = &args.server {
        return stdio_remote(&args, url, &config);
    }
    // With `[identity]`, nobody names their own agent: the gateway decides
    // as the agent its entry is configured for, never the client's name.
    if config.identity.enabled() && config.mcp.server(&g.name).is_none_or(|s| s.agent.is_none()) {
        bail!(
            "with `[identity]`, the stdio gateway decides as a configured agent: set `agent` in the `[[mcp.servers]]` entry `{}`",
            g.name
        );
    }
    let listen = g.listen.or_else(|| {
        g.config
            .is_none()
            .then(|| SocketAddr::from(([127, 0, 0, 1], 0)))
    });
    let mut overrides = overrides(global, listen, &g.log_dir, &g.state_dir);
    overrides.admin_listen = g.admin_listen.clone();
    let runtime = runtime()?;
    let result = runtime.block_on(async {
        let options = crate::server::ServeOptions {
            overrides,
            ..Default::default()
        };
        let bound = crate::server::bind(config, g.config.clone(), options).await?;
        eprintln!(
            "arbiter: MCP gateway for `{}`; admin plane on {}",
            g.name,
            bound.admin_endpoint()
        );
        bound.ready().await?;
        let registry = bound
            .registry()
            .context("the policies loaded but nothing serves them")?;
        let server = registry
            .config()
            .mcp
            .server(&g.name)
            .cloned()
            .unwrap_or_else(|| McpServerConfig {
                name: g.name.clone(),
                ..McpServerConfig::default()
            });
        let gateway = Gateway::new(registry.arbiter().clone(), Arc::new(server));
        let status = crate::mcp::stdio::run(
            gateway,
            &args.command,
            tokio::io::stdin(),
            tokio::io::stdout(),
        )
        .await;
        // Every decision is written and the log sealed before Arbiter exits.
        bound.shutdown();
        bound.wait().await?;
        let status = status?;
        eprintln!("arbiter: the MCP server exited ({status})");
        Ok::<_, anyhow::Error>(exit_code(status))
    });
    // A read of stdin may still be parked on a thread; do not wait for it.
    runtime.shutdown_timeout(Duration::from_millis(200));
    result
}

/// The stdio gateway asking a running decision service.
fn stdio_remote(args: &StdioArgs, url: &str, config: &Config) -> anyhow::Result<ExitCode> {
    let g = &args.gateway;
    let address = ServerAddress::new(url, std::env::var("ARBITER_TOKEN").ok(), None)?;
    let server = config.mcp.server(&g.name).cloned().unwrap_or_default();
    let runtime = runtime()?;
    let result = runtime.block_on(async {
        match address.call(hyper::Method::GET, "/readyz", None).await {
            Ok((200, _)) => {}
            Ok((status, v)) => bail!("the decision service at {url} is not ready ({status}): {v}"),
            Err(e) => return Err(e.context(format!("the decision service at {url}"))),
        }
        eprintln!("arbiter: MCP gateway for `{}`, deciding at {url}", g.name);
        let gateway = Gateway::with_decider(
            crate::mcp::decider::Decider::Remote(Arc::new(address)),
            Arc::new(server),
        );
        let status = crate::mcp::stdio::run(
            gateway,
            &args.command,
            tokio::io::stdin(),
            tokio::io::stdout(),
        )
        .await?;
        eprintln!("arbiter: the MCP server exited ({status})");
        Ok(exit_code(status))
    });
    runtime.shutdown_timeout(Duration::from_millis(200));
    result
}

/// Arbiter's exit code for the server's exit status.
fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
        None => ExitCode::from(1),
    }
}

fn http(args: HttpArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let g = &args.gateway;
    let mut config = configured(g)?;
    if let Some(u) = &args.upstream {
        for s in &mut config.mcp.servers {
            if s.name == g.name {
                s.upstream = Some(u.clone());
            }
        }
    }
    let server = config.mcp.server(&g.name).cloned().unwrap_or_default();
    let Some(upstream) = server.upstream else {
        bail!(
            "no upstream for MCP server `{}`: give `--upstream URL` or `upstream` in its `[[mcp.servers]]` entry",
            g.name
        );
    };
    // The upstream given on the command line passes the configuration's checks.
    crate::config::check_mcp(&config.mcp).map_err(|e| anyhow::anyhow!("--upstream: {e}"))?;
    let mut overrides = overrides(global, g.listen, &g.log_dir, &g.state_dir);
    overrides.admin_listen = g.admin_listen.clone();
    let name = g.name.clone();
    serve_config(config, g.config.clone(), overrides, move |addr, admin| {
        eprintln!(
            "arbiter: MCP gateway http://{addr}/mcp/{name} -> {upstream}; admin plane on {admin}"
        );
    })
}

fn list(args: &ListArgs) -> anyhow::Result<ExitCode> {
    let Some(body) = read_state(&args.remote, "/v1/mcp/tools", None, args.json)? else {
        return Ok(ExitCode::SUCCESS);
    };
    println!("{:<20} {:<28} {:<16}  state", "server", "tool", "accepted");
    for t in body["tools"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let short = |v: &Value| {
            v.as_str()
                .map(|d| {
                    d.trim_start_matches("sha256:")
                        .chars()
                        .take(12)
                        .collect::<String>()
                })
                .unwrap_or_default()
        };
        let state = match t["changed"].as_object() {
            Some(c) => format!(
                "CHANGED at {} to {}: calls denied until `arbiter mcp tools accept {} {}`",
                c["seen_at"].as_str().unwrap_or("?"),
                short(&c["digest"]),
                t["server"].as_str().unwrap_or("?"),
                t["tool"].as_str().unwrap_or("?"),
            ),
            None => "ok".to_owned(),
        };
        println!(
            "{:<20} {:<28} {:<16}  {state}",
            t["server"].as_str().unwrap_or("?"),
            t["tool"].as_str().unwrap_or("?"),
            short(&t["digest"]),
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn accept(args: &AcceptArgs) -> anyhow::Result<ExitCode> {
    let server = remote(&args.remote)?;
    let path = format!(
        "/v1/mcp/tools/{}/{}/accept",
        crate::client::percent_encode(&args.mcp_server),
        crate::client::percent_encode(&args.tool)
    );
    let pin = call(&server, hyper::Method::POST, &path, None)?;
    println!(
        "tool `{}` of `{}` accepted at {}: its calls are decided by the policies again",
        args.tool,
        args.mcp_server,
        pin["digest"].as_str().unwrap_or("?")
    );
    Ok(ExitCode::SUCCESS)
}
