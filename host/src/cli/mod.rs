//! The `arbiter` command line: argument parsing and the commands, each a
//! function returning the process exit code. Errors carry context for the
//! user and are printed by `main` with their whole chain.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};

use crate::arbiter::Arbiter;
use crate::cases::{self, Case};
use crate::client::{ServerAddress, error_message};
use crate::config::Config;
use crate::config::{CacheConfig, Overrides, TrustConfig, TrustedKey};
use crate::engine::{Engine, EngineConfig};
use crate::evaluate::{Limits, WasiGrants};
use crate::examples;
use crate::front_door::wire;
use crate::load::{self, CompileCache, PolicySpec, Source};
use crate::signing::{KeyPair, PublicKey, SignatureFile, signature_path};

mod agents;
mod approvals;
mod log;
mod mcp;
mod oci;
mod rollout;

/// Exit code for a run that worked but found failures (`arbiter test`).
pub const EXIT_FAILURES: u8 = 1;

/// Arbiter: the runtime policy decision point for AI agents.
#[derive(Debug, Parser)]
#[command(name = "arbiter", version, about)]
pub struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct Global {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    /// Where compiled policies are cached [default: $ARBITER_CACHE_DIR,
    /// $XDG_CACHE_HOME/arbiter or ~/.cache/arbiter].
    #[arg(long, global = true, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Compile every policy afresh and cache nothing.
    #[arg(long, global = true, conflicts_with = "cache_dir")]
    no_cache: bool,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

impl Cli {
    /// The log format asked for.
    pub fn log_format(&self) -> LogFormat {
        self.global.log_format
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve decisions over HTTP until SIGTERM or Ctrl-C. Without --config,
    /// serves the embedded example policies on their default routes.
    Serve(ServeArgs),
    /// Decide one request (wire format, with optional `history`) with one
    /// policy and print the decision as JSON.
    Eval(EvalArgs),
    /// Run a case file and print each failure, then `N passed, N failed`.
    Test(TestArgs),
    /// Show a component's version, size, imports and exports, and whether
    /// it fits the arbiter:policy world.
    Inspect {
        /// The component (.wasm).
        file: PathBuf,
        /// Inspect it as loaded with these WASI capabilities granted.
        #[command(flatten)]
        grants: GrantArgs,
    },
    /// Write a new Ed25519 key pair: ID.key (owner-only) and ID.pub.
    Keygen(KeygenArgs),
    /// Make a new bearer token and print it with the SHA-256 that
    /// `[[identity.tokens]]` and `[[admin.operators]]` take (or, with
    /// --hash, the SHA-256 of a token read from standard input).
    Token(TokenArgs),
    /// Sign a policy component: writes the detached FILE.sig.
    Sign(SignArgs),
    /// Check a component's signature against public keys or a
    /// configuration's [trust].
    Verify(VerifyArgs),
    /// Sign a policy component and publish it, with its signature, as
    /// one OCI artifact (registry password from $ARBITER_REGISTRY_PASSWORD).
    Push(oci::PushArgs),
    /// Pull a policy artifact from an OCI registry and verify its
    /// signature against public keys or a configuration's [trust].
    Pull(oci::PullArgs),
    /// On a running server, serve an earlier version of a policy at once
    /// (admin token from $ARBITER_ADMIN_TOKEN).
    Rollback(RollbackArgs),
    /// On a running server, show each policy's serving version, the
    /// versions kept for rollback and the last load attempt.
    Status(RemoteArgs),
    /// Read a decision log: verify its chain, query it, count it.
    #[command(subcommand)]
    Log(log::LogCommand),
    /// On a running server, set a policy's mode from the next decision:
    /// monitor, soft-enforce or enforce (admin token).
    Mode(rollout::ModeArgs),
    /// On a running server, make a candidate the serving version of its
    /// policy, through the load pipeline (admin token).
    Promote(rollout::PromoteArgs),
    /// On a running server, show what monitor mode observed per agent and
    /// action: counts, params keys and types, figures, distinct values.
    Baseline(rollout::BaselineArgs),
    /// A/B testing of policy versions on a running server.
    #[command(subcommand)]
    Ab(rollout::AbCommand),
    /// Re-evaluate the decisions a log recorded against a candidate policy
    /// file and print where it would have decided otherwise.
    Replay(rollout::ReplayArgs),
    /// On a running server: the agents it knows, and its kill switch.
    #[command(subcommand)]
    Agents(agents::AgentsCommand),
    /// On a running server: approvals waiting for a person, and answers.
    #[command(subcommand)]
    Approvals(approvals::ApprovalsCommand),
    /// The MCP gateway: Arbiter in front of an MCP server (stdio or
    /// Streamable HTTP), and the tool definitions it pinned.
    #[command(subcommand)]
    Mcp(mcp::McpCommand),
}

#[derive(Debug, Args)]
struct KeygenArgs {
    /// The key's id, as signatures and `[[trust.keys]]` name it
    /// (A-Z a-z 0-9 . _ -), e.g. `secteam-2026`.
    #[arg(long)]
    id: String,
    /// Where to write the two files.
    #[arg(long, value_name = "DIR", default_value = ".")]
    out: PathBuf,
}

#[derive(Debug, Args)]
struct SignArgs {
    /// The private key file (from `arbiter keygen`).
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// The policy name the component is for; it must equal the configured name.
    #[arg(long)]
    name: String,
    /// The version you give it (semantic versioning, e.g. 1.4.0).
    #[arg(long)]
    version: String,
    /// Where to write the signature [default: COMPONENT.sig].
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// The component (.wasm).
    component: PathBuf,
}

#[derive(Debug, Args)]
struct VerifyArgs {
    /// A public key file to trust (repeatable).
    #[arg(long = "key", value_name = "FILE")]
    keys: Vec<PathBuf>,
    /// A configuration whose `[trust]` to use (keys, scopes, revocations).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The name the component is configured as [default: the signed name].
    #[arg(long)]
    name: Option<String>,
    /// The component (.wasm); its signature is COMPONENT.sig.
    component: PathBuf,
}

#[derive(Debug, Args)]
pub(super) struct RemoteArgs {
    /// The server's admin plane: `unix:PATH`, `http://HOST:PORT` or
    /// `https://HOST:PORT` (its certificate checked against Mozilla's
    /// roots and the PEM file $ARBITER_ADMIN_CA) [default: $ARBITER_ADMIN,
    /// else the socket `admin.sock` in the default state directory].
    #[arg(long, visible_alias = "server", value_name = "ADDRESS")]
    admin: Option<String>,
}

#[derive(Debug, Args)]
struct RollbackArgs {
    /// The policy.
    name: String,
    /// The version to serve (`sha256:...` or a unique prefix of the hex);
    /// default: the one loaded before the serving one.
    #[arg(long, value_name = "VERSION")]
    to: Option<String>,
    #[command(flatten)]
    remote: RemoteArgs,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// The configuration file (TOML); default: the embedded configuration.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Listen here instead of the configured `server.listen`.
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<std::net::SocketAddr>,
    /// Write the decision log here instead of the configured `log.dir`.
    #[arg(long, value_name = "DIR")]
    log_dir: Option<PathBuf>,
    /// Keep the durable state (suspensions, open breakers) here instead of
    /// the configured `state.dir`.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Serve the admin plane here instead of the configured `admin.listen`:
    /// `unix:PATH` or `ADDR:PORT`.
    #[arg(long, value_name = "ADDRESS")]
    admin_listen: Option<crate::config::AdminListen>,
}

#[derive(Debug, Args)]
struct TokenArgs {
    /// Print the SHA-256 of the token on standard input instead.
    #[arg(long)]
    hash: bool,
}

#[derive(Debug, Args)]
struct EvalArgs {
    /// The policy component (.wasm).
    #[arg(long, value_name = "FILE")]
    policy: PathBuf,
    /// The policy's settings, as JSON.
    #[arg(long, value_name = "JSON", default_value = "{}")]
    settings: String,
    #[command(flatten)]
    limits: LimitArgs,
    /// The request file, or `-` for standard input.
    request: PathBuf,
}

#[derive(Debug, Args)]
pub(super) struct LimitArgs {
    /// Fuel per call [default: 50000000].
    #[arg(long)]
    fuel: Option<u64>,
    /// Wall-clock deadline per call, in milliseconds [default: 100].
    #[arg(long)]
    deadline_ms: Option<u64>,
    /// Linear-memory cap, in bytes [default: 16 MiB].
    #[arg(long)]
    max_memory_bytes: Option<usize>,
    #[command(flatten)]
    grants: GrantArgs,
}

#[derive(Debug, Args)]
pub(super) struct GrantArgs {
    /// Grant a WASI capability the policy imports: `clocks` or `random`
    /// (a Go policy needs both) [default: none].
    #[arg(long = "grant", value_name = "CAPABILITY", value_parser = ["clocks", "random"])]
    grants: Vec<String>,
}

impl GrantArgs {
    fn wasi(&self) -> WasiGrants {
        let granted = |c: &str| self.grants.iter().any(|g| g == c);
        WasiGrants {
            clocks: granted("clocks"),
            random: granted("random"),
        }
    }
}

impl LimitArgs {
    pub(super) fn limits(&self) -> Limits {
        let d = Limits::default();
        Limits {
            fuel: self.fuel.unwrap_or(d.fuel),
            deadline_ms: self.deadline_ms.unwrap_or(d.deadline_ms),
            max_memory_bytes: self.max_memory_bytes.unwrap_or(d.max_memory_bytes),
            wasi: self.grants.wasi(),
            ..d
        }
    }
}

#[derive(Debug, Args)]
struct TestArgs {
    /// Use FILE for the policy NAME; names not given resolve to the
    /// example policies embedded in this binary.
    #[arg(long = "policy", value_name = "NAME=FILE", value_parser = parse_policy_arg)]
    policies: Vec<(String, PathBuf)>,
    /// Limits for the policies given with --policy.
    #[command(flatten)]
    limits: LimitArgs,
    /// The case file (a JSON list of cases).
    cases: PathBuf,
}

fn parse_policy_arg(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((name, file)) if !name.is_empty() && !file.is_empty() => {
            Ok((name.to_owned(), PathBuf::from(file)))
        }
        _ => Err(format!("expected NAME=FILE, got `{s}`")),
    }
}

/// Runs the parsed command line.
///
/// # Errors
/// Anything that stops the command, with context naming the input.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let Cli { global, command } = cli;
    match command {
        // The server opens its cache from its configuration.
        Command::Serve(args) => serve(args, &global),
        Command::Eval(args) => eval(args, open_cache(&global)?.as_ref()),
        Command::Test(args) => test(args, open_cache(&global)?.as_ref()),
        Command::Inspect { file, grants } => inspect(&file, &grants.wasi()),
        Command::Keygen(args) => keygen(&args),
        Command::Token(args) => token(&args),
        Command::Sign(args) => sign(&args),
        Command::Verify(args) => verify(&args),
        Command::Push(args) => oci::push(&args),
        Command::Pull(args) => oci::pull(&args),
        Command::Rollback(args) => rollback(&args),
        Command::Status(args) => status(&args),
        Command::Log(command) => log::run(&command),
        Command::Mode(args) => rollout::mode(&args),
        Command::Promote(args) => rollout::promote(&args),
        Command::Baseline(args) => rollout::baseline(&args),
        Command::Ab(command) => rollout::ab(&command),
        Command::Replay(args) => rollout::replay(&args, open_cache(&global)?.as_ref()),
        Command::Agents(command) => agents::run(&command),
        Command::Approvals(command) => approvals::run(&command),
        Command::Mcp(command) => mcp::run(command, &global),
    }
}

fn token(args: &TokenArgs) -> anyhow::Result<ExitCode> {
    if args.hash {
        let mut text = String::new();
        Read::read_to_string(&mut std::io::stdin().take(4096), &mut text)
            .context("cannot read the token from standard input")?;
        let token = text.trim();
        if token.is_empty() {
            bail!("no token on standard input");
        }
        println!("{}", crate::identity::token_digest(token));
        return Ok(ExitCode::SUCCESS);
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no OS randomness: {e}"))?;
    let token = format!("arb_{}", crate::hex::encode(&bytes));
    println!("token:  {token}");
    println!("sha256 = \"{}\"", crate::identity::token_digest(&token));
    eprintln!("arbiter: give the token to its holder only; the configuration keeps the sha256");
    Ok(ExitCode::SUCCESS)
}

fn keygen(args: &KeygenArgs) -> anyhow::Result<ExitCode> {
    let pair = KeyPair::generate(&args.id)?;
    let private = args.out.join(format!("{}.key", args.id));
    let public = args.out.join(format!("{}.pub", args.id));
    for (path, bytes, mode) in [
        (&private, pair.private_file(), 0o600),
        (&public, pair.public().file(), 0o644),
    ] {
        crate::paths::write_new(path, bytes.as_bytes(), mode)
            .with_context(|| format!("cannot create `{}`", path.display()))?;
    }
    println!(
        "wrote {} (private: keep it secret) and {}",
        private.display(),
        public.display()
    );
    println!("\ntrust it in the configuration:\n\n[[trust.keys]]");
    println!(
        "id = \"{}\"\npublic_key = \"{}\"",
        pair.id(),
        pair.public().hex()
    );
    println!("policies = [\"*\"]   # or the names this key may sign, e.g. [\"finance-*\"]");
    Ok(ExitCode::SUCCESS)
}

/// Creates `path` with `mode` (owner-only for secrets) from the start; an
/// existing file is never overwritten.
fn sign(args: &SignArgs) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(&args.component)
        .with_context(|| format!("cannot read `{}`", args.component.display()))?;
    let (signature, key_id) = signature_by(&args.key, &args.name, &args.version, &bytes)?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| signature_path(&args.component));
    // Written beside, then renamed: a watching server never sees half.
    let tmp = out.with_extension("sig.tmp");
    std::fs::write(&tmp, signature.to_json())
        .and_then(|()| std::fs::rename(&tmp, &out))
        .with_context(|| format!("cannot write `{}`", out.display()))?;
    println!(
        "signed `{}` {} (sha256:{}) with key `{key_id}`: {}",
        args.name,
        args.version,
        signature.payload.sha256,
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `bytes` signed as policy `name` at `version` with the private key in
/// `key_file` (refused unless owner-only), and the key's id.
fn signature_by(
    key_file: &Path,
    name: &str,
    version: &str,
    bytes: &[u8],
) -> anyhow::Result<(SignatureFile, String)> {
    let meta = std::fs::metadata(key_file)
        .with_context(|| format!("cannot read `{}`", key_file.display()))?;
    if let Some(mode) = crate::paths::shared_mode(&meta) {
        bail!(
            "`{}` can be read by others (mode {mode:o}); a private key must be owner-only: chmod 600 it",
            key_file.display(),
        );
    }
    let text = std::fs::read_to_string(key_file)
        .with_context(|| format!("cannot read `{}`", key_file.display()))?;
    let pair =
        KeyPair::from_private_file(&text).with_context(|| format!("`{}`", key_file.display()))?;
    let signature = pair.sign(name, version, bytes, std::time::SystemTime::now())?;
    Ok((signature, pair.id().to_owned()))
}

fn verify(args: &VerifyArgs) -> anyhow::Result<ExitCode> {
    let trust = trust_from(&args.keys, args.config.as_deref())?;
    let sig = signature_path(&args.component);
    let name = match &args.name {
        Some(n) => n.clone(),
        None => match SignatureFile::read(&sig) {
            Ok(Some(f)) => f.payload.policy,
            Ok(None) => bail!(
                "`{}` is unsigned: there is no `{}`",
                args.component.display(),
                sig.display()
            ),
            Err(e) => return Err(anyhow::Error::new(e).context(format!("`{}`", sig.display()))),
        },
    };
    let (version, signer) = verified(name.clone(), Source::File(args.component.clone()), trust)?;
    println!(
        "ok: `{name}` {} ({version}) signed by `{}` at {}",
        signer.version, signer.key_id, signer.signed_at
    );
    Ok(ExitCode::SUCCESS)
}

/// The component at `source` through the verify stage as policy `name`,
/// a signature required: its version and signer.
fn verified(
    name: String,
    source: Source,
    trust: TrustConfig,
) -> anyhow::Result<(String, load::Signer)> {
    let spec = PolicySpec {
        name,
        source,
        settings: serde_json::json!({}),
        limits: Limits::default(),
        smoke: Vec::new(),
        trust: std::sync::Arc::new(trust),
    };
    let (version, signer) = load::verify_signature(&spec)?;
    // Signatures are required, so a pass always names its signer.
    Ok((version, signer.context("no signer")?))
}

/// The trust to verify with: a configuration's `[trust]` and public key
/// files, each trusted for every policy; signatures required.
fn trust_from(keys: &[PathBuf], config: Option<&Path>) -> anyhow::Result<TrustConfig> {
    let mut trust = match config {
        Some(path) => Config::from_file(path)?.0.trust,
        None => TrustConfig::default(),
    };
    for path in keys {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read `{}`", path.display()))?;
        let key = PublicKey::from_file(&text).with_context(|| format!("`{}`", path.display()))?;
        trust.keys.push(TrustedKey {
            id: key.id().to_owned(),
            public_key: key.hex(),
            policies: vec!["*".into()],
        });
    }
    if trust.keys.is_empty() {
        bail!("no keys to verify with: give --key FILE.pub or --config FILE");
    }
    trust.require_signatures = true;
    Ok(trust)
}

/// A running server's admin plane, with the operator's token from
/// $ARBITER_ADMIN_TOKEN and, for `https://`, a private CA from
/// $ARBITER_ADMIN_CA.
pub(super) fn remote(args: &RemoteArgs) -> anyhow::Result<ServerAddress> {
    let token = std::env::var("ARBITER_ADMIN_TOKEN").ok();
    let address = match &args.admin {
        Some(a) => a.clone(),
        None => match std::env::var("ARBITER_ADMIN") {
            Ok(a) => a,
            Err(_) => {
                let dir = crate::state::default_dir()
                    .context("no --admin given and no default state directory ($HOME is unset)")?;
                format!("unix:{}", dir.join(crate::server::ADMIN_SOCKET).display())
            }
        },
    };
    let ca = std::env::var_os("ARBITER_ADMIN_CA").map(PathBuf::from);
    ServerAddress::new(&address, token, ca.as_deref())
}

pub(super) fn call(
    server: &ServerAddress,
    method: hyper::Method,
    path: &str,
    body: Option<&serde_json::Value>,
) -> anyhow::Result<serde_json::Value> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let (status, body) = runtime.block_on(server.call(method, path, body))?;
    if !(200..300).contains(&status) {
        bail!("the server refused ({status}): {}", error_message(&body));
    }
    Ok(body)
}

/// `GET path[?agent=AGENT]` on a server; with `json`, prints the body and
/// returns `None`, so the caller prints its own summary only otherwise.
pub(super) fn read_state(
    args: &RemoteArgs,
    path: &str,
    agent: Option<&str>,
    json: bool,
) -> anyhow::Result<Option<serde_json::Value>> {
    let server = remote(args)?;
    let path = match agent {
        Some(a) => format!("{path}?agent={}", crate::client::percent_encode(a)),
        None => path.to_owned(),
    };
    let body = call(&server, hyper::Method::GET, &path, None)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(None);
    }
    Ok(Some(body))
}

fn rollback(args: &RollbackArgs) -> anyhow::Result<ExitCode> {
    let server = remote(&args.remote)?;
    let body = serde_json::json!({ "version": args.to });
    let path = format!("/v1/policies/{}/rollback", args.name);
    let done = call(&server, hyper::Method::POST, &path, Some(&body))?;
    println!(
        "policy `{}` rolled back: {} -> {} (loaded {})",
        args.name,
        done["from"].as_str().unwrap_or("?"),
        done["to"].as_str().unwrap_or("?"),
        done["loaded_at"].as_str().unwrap_or("?"),
    );
    Ok(ExitCode::SUCCESS)
}

fn status(args: &RemoteArgs) -> anyhow::Result<ExitCode> {
    let server = remote(args)?;
    let body = call(&server, hyper::Method::GET, "/v1/policies", None)?;
    let config = &body["config"];
    println!("config  {}", config["source"].as_str().unwrap_or("?"));
    print_attempt(&config["last_attempt"]);
    for p in body["policies"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        println!(
            "\npolicy  {}  ({})",
            p["name"].as_str().unwrap_or("?"),
            p["state"].as_str().unwrap_or("?")
        );
        println!("  source   {}", p["source"].as_str().unwrap_or("?"));
        for v in p["versions"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let mark = if v["serving"] == true { "*" } else { " " };
            println!(
                "  {mark} {}  loaded {}",
                v["version"].as_str().unwrap_or("?"),
                v["loaded_at"].as_str().unwrap_or("?")
            );
        }
        print_attempt(&p["last_attempt"]);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_attempt(a: &serde_json::Value) {
    match a["error"].as_str() {
        Some(e) => println!(
            "  last attempt {} FAILED at {}: {e}",
            a["at"].as_str().unwrap_or("?"),
            a["step"].as_str().unwrap_or("?")
        ),
        None => println!("  last attempt {} ok", a["at"].as_str().unwrap_or("?")),
    }
}

fn serve(args: ServeArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let config = match &args.config {
        Some(path) => Config::from_file(path)?.0,
        None => Config::default_config()?,
    };
    let mut overrides = overrides(global, args.listen, &args.log_dir, &args.state_dir);
    overrides.admin_listen = args.admin_listen;
    serve_config(config, args.config.clone(), overrides, |addr, admin| {
        eprintln!("arbiter: listening on http://{addr}; admin plane on {admin}");
    })
}

/// What the command line changes in the configuration.
fn overrides(
    global: &Global,
    listen: Option<std::net::SocketAddr>,
    log_dir: &Option<PathBuf>,
    state_dir: &Option<PathBuf>,
) -> Overrides {
    let cache = if global.no_cache {
        Some(CacheConfig {
            enabled: false,
            dir: None,
        })
    } else {
        global.cache_dir.as_ref().map(|dir| CacheConfig {
            enabled: true,
            dir: Some(dir.clone()),
        })
    };
    Overrides {
        listen,
        cache,
        log_dir: log_dir.clone(),
        state_dir: state_dir.clone(),
        admin_listen: None,
    }
}

/// The async runtime every long-running command runs on.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("arbiter")
        .build()
        .context("cannot start the async runtime")
}

/// Runs the server for `config` until SIGTERM or SIGINT, reloading on
/// SIGHUP; `banner` is told the address once it is bound.
fn serve_config(
    config: Config,
    config_path: Option<PathBuf>,
    overrides: Overrides,
    banner: impl FnOnce(std::net::SocketAddr, &crate::server::AdminEndpoint),
) -> anyhow::Result<ExitCode> {
    let runtime = runtime()?;
    runtime.block_on(async {
        let options = crate::server::ServeOptions {
            overrides,
            ..Default::default()
        };
        let bound = crate::server::bind(config, config_path, options).await?;
        banner(bound.local_addr(), bound.admin_endpoint());
        let hangup = tokio::spawn(reload_on_hangup(bound.reload_handle()));
        let shutdown = async {
            signal().await;
            eprintln!(
                "arbiter: shutting down; draining in-flight requests (Ctrl-C again to quit now)"
            );
        };
        let wait = async {
            tokio::select! {
                r = bound.ready() => match r {
                    Ok(()) => eprintln!("arbiter: ready"),
                    Err(e) => return Err(e),
                },
                () = shutdown => {
                    bound.shutdown();
                    return Ok(bound);
                }
            }
            signal().await;
            eprintln!(
                "arbiter: shutting down; draining in-flight requests (Ctrl-C again to quit now)"
            );
            bound.shutdown();
            Ok(bound)
        };
        let bound = match wait.await {
            Ok(b) => b,
            Err(e) => return Err(anyhow::Error::new(e)),
        };
        tokio::select! {
            r = bound.wait() => r?,
            () = signal() => {
                eprintln!("arbiter: second signal; quitting without draining");
                return Ok(ExitCode::from(130));
            }
        }
        hangup.abort();
        eprintln!("arbiter: stopped");
        Ok(ExitCode::SUCCESS)
    })
}

/// Reloads the configuration and every policy on each SIGHUP.
async fn reload_on_hangup(handle: crate::server::ReloadHandle) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hangup.recv().await.is_some() {
            eprintln!("arbiter: SIGHUP: reloading the configuration and every policy");
            handle.reload("sighup");
        }
    }
    #[cfg(not(unix))]
    drop(handle);
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn open_cache(global: &Global) -> anyhow::Result<Option<CompileCache>> {
    if global.no_cache {
        return Ok(None);
    }
    let Some(dir) = global.cache_dir.clone().or_else(CompileCache::default_dir) else {
        return Ok(None);
    };
    CompileCache::open(&dir)
        .map(Some)
        .with_context(|| format!("cannot open the compile cache `{}`", dir.display()))
}

pub(super) fn engine() -> anyhow::Result<Engine> {
    Ok(Engine::new(&EngineConfig::default())?)
}

fn eval(args: EvalArgs, cache: Option<&CompileCache>) -> anyhow::Result<ExitCode> {
    let settings: serde_json::Value =
        serde_json::from_str(&args.settings).context("--settings is not valid JSON")?;
    let bytes = read_input(&args.request)?;
    let request = wire::parse_request(&bytes).with_context(|| {
        format!(
            "request `{}` does not fit the wire format",
            args.request.display()
        )
    })?;
    let engine = engine()?;
    let spec = PolicySpec {
        name: policy_name(&args.policy),
        source: Source::File(args.policy.clone()),
        settings,
        limits: args.limits.limits(),
        smoke: Vec::new(),
        trust: Default::default(),
    };
    let policy = load::load(&engine, cache, &spec)?;
    let arbiter = Arbiter::with_chain(engine, vec![policy]);
    let decision = arbiter.decide(&request);
    println!("{}", serde_json::to_string_pretty(&decision)?);
    Ok(ExitCode::SUCCESS)
}

fn test(args: TestArgs, cache: Option<&CompileCache>) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(&args.cases)
        .with_context(|| format!("cannot read case file `{}`", args.cases.display()))?;
    let cases: Vec<Case> = wire::parse(&bytes).with_context(|| {
        format!(
            "case file `{}` is not a list of cases",
            args.cases.display()
        )
    })?;
    let engine = engine()?;
    let given: BTreeMap<String, PathBuf> = args.policies.into_iter().collect();
    let mut policies = BTreeMap::new();
    for name in cases.iter().map(|c| c.policy.as_str()) {
        if policies.contains_key(name) {
            continue;
        }
        let (source, limits) = match given.get(name) {
            Some(file) => (Source::File(file.clone()), args.limits.limits()),
            None => match examples::source(name) {
                Some(s) => (s, Limits::default()),
                None => bail!(
                    "a case names policy `{name}`: give it with --policy {name}=FILE \
                     (embedded examples: {})",
                    examples::names().join(", ")
                ),
            },
        };
        let spec = PolicySpec {
            name: name.to_owned(),
            source,
            settings: serde_json::json!({}),
            limits,
            smoke: Vec::new(),
            trust: Default::default(),
        };
        policies.insert(name.to_owned(), load::load(&engine, cache, &spec)?);
    }
    let results = cases::run(&engine, &policies, &cases);
    let failed = results.iter().filter(|r| !r.passed()).count();
    for r in results.iter().filter(|r| !r.passed()) {
        println!("FAIL {} / {}", r.policy, r.name);
        for m in &r.mismatches {
            println!("    {m}");
        }
        if let Some(d) = &r.decision {
            println!("    reason: {}", d.reason);
        }
    }
    println!("{} passed, {failed} failed", results.len() - failed);
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILURES)
    })
}

fn inspect(file: &Path, grants: &WasiGrants) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read `{}`", file.display()))?;
    let engine = engine()?;
    let report = load::inspect(&engine, &bytes, grants)
        .map_err(anyhow::Error::new)
        .with_context(|| format!("cannot inspect `{}`", file.display()))?;
    println!("file:    {}", file.display());
    println!("version: {}", report.version);
    println!("size:    {} bytes", report.size_bytes);
    match &report.conforms {
        Ok(version) => println!("world:   arbiter:policy/policy@{version} (conforms)"),
        Err(why) => println!("world:   does not conform: {why}"),
    }
    println!("exports:");
    for e in &report.exports {
        println!("    {e}");
    }
    println!("imports:");
    for i in &report.imports {
        match &i.refusal {
            None => println!("    {:<40} provided", i.name),
            Some(why) => println!("    {:<40} REFUSED: {why}", i.name),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn read_input(path: &Path) -> anyhow::Result<Vec<u8>> {
    if path == Path::new("-") {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("cannot read standard input")?;
        Ok(buf)
    } else {
        std::fs::read(path).with_context(|| format!("cannot read `{}`", path.display()))
    }
}

pub(super) fn policy_name(file: &Path) -> String {
    file.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "policy".into())
}
