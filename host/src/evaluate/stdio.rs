//! The inert WASI surface that the Rust standard library (and other guest
//! toolchains) link into every component even when a policy never uses it:
//! `wasi:cli` stdio, environment, exit and terminals, and the `wasi:io`
//! streams they hand out.
//!
//! Nothing here reaches the host: stdout and stderr write into a small
//! per-call buffer (so a panic message can be reported), stdin is closed,
//! the environment and arguments are empty, there is no terminal, and
//! `exit` ends the call as a failure. The filesystem (with nothing in it),
//! clocks and randomness are in [`super::wasi`]; anything else is refused
//! at load.

use wasmtime::component::{ComponentType, Lift, Linker, Lower, Resource, ResourceType};

use super::sandbox::{PolicyExited, StoreState};

/// The interfaces this module links, by name without version.
pub const LINKED_INTERFACES: &[&str] = &[
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
];

/// The WASI version the definitions carry. wasmtime's linker also matches
/// imports of any earlier compatible 0.2.x version to them.
pub(super) const VERSION: &str = "0.2.6";

/// At most this much of a policy's stdout and stderr is kept per call. It
/// bounds what a hostile policy can make the host hold, and is plenty for a
/// panic message.
const MAX_CAPTURE_BYTES: usize = 4096;

/// Stream representations handed to the guest.
const STDOUT: u32 = 1;
const STDERR: u32 = 2;

/// What a policy wrote during one call.
#[derive(Debug, Default)]
pub(crate) struct Captured {
    stderr: Vec<u8>,
}

impl Captured {
    fn write(&mut self, stream: u32, bytes: &[u8]) {
        // stdout is accepted and dropped: only stderr carries diagnostics.
        if stream == STDERR {
            let room = MAX_CAPTURE_BYTES.saturating_sub(self.stderr.len());
            self.stderr
                .extend_from_slice(&bytes[..bytes.len().min(room)]);
        }
    }

    /// What the policy printed to stderr, if anything: in practice a panic
    /// or allocation-failure message.
    pub(crate) fn panic_message(&self) -> Option<String> {
        let text = String::from_utf8_lossy(&self.stderr);
        let text = text.trim();
        if text.is_empty() {
            return None;
        }
        // One line for the reason; the rest is usually a backtrace hint.
        let line = text.lines().collect::<Vec<_>>().join(" ");
        Some(truncate(&line, 300))
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

pub(super) struct InputStream;
pub(super) struct OutputStream;
pub(super) struct IoError;
pub(super) struct Pollable;
struct TerminalInput;
struct TerminalOutput;

/// `wasi:io/streams.stream-error`.
#[derive(ComponentType, Lift, Lower)]
#[component(variant)]
enum StreamError {
    #[component(name = "last-operation-failed")]
    LastOperationFailed(Resource<IoError>),
    #[component(name = "closed")]
    Closed,
}

type Streamed<T> = (Result<T, StreamError>,);

/// Adds the inert interfaces to `linker`.
///
/// # Errors
/// Only if a definition clashes, which would be a bug here.
pub(crate) fn add_to_linker(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
    fn resource<T: 'static>(
        i: &mut wasmtime::component::LinkerInstance<'_, StoreState>,
        name: &str,
    ) -> wasmtime::Result<()> {
        i.resource(name, ResourceType::host::<T>(), |_, _| Ok(()))
    }
    let v = |name: &str| format!("{name}@{VERSION}");

    let mut i = linker.instance(&v("wasi:io/error"))?;
    resource::<IoError>(&mut i, "error")?;
    i.func_wrap(
        "[method]error.to-debug-string",
        |_, (_,): (Resource<IoError>,)| Ok(("error".to_owned(),)),
    )?;

    let mut i = linker.instance(&v("wasi:io/poll"))?;
    resource::<Pollable>(&mut i, "pollable")?;
    // Every stream is always ready, so nothing ever blocks.
    i.func_wrap(
        "[method]pollable.ready",
        |_, (_,): (Resource<Pollable>,)| Ok((true,)),
    )?;
    i.func_wrap(
        "[method]pollable.block",
        |_, (_,): (Resource<Pollable>,)| Ok(()),
    )?;
    i.func_wrap("poll", |_, (list,): (Vec<Resource<Pollable>>,)| {
        let ready = (0..list.len())
            .filter_map(|n| u32::try_from(n).ok())
            .collect::<Vec<_>>();
        Ok((ready,))
    })?;

    let mut i = linker.instance(&v("wasi:io/streams"))?;
    resource::<IoError>(&mut i, "error")?;
    resource::<Pollable>(&mut i, "pollable")?;
    resource::<InputStream>(&mut i, "input-stream")?;
    resource::<OutputStream>(&mut i, "output-stream")?;
    for method in ["read", "blocking-read", "skip", "blocking-skip"] {
        i.func_wrap(
            &format!("[method]input-stream.{method}"),
            |_, (_, _): (Resource<InputStream>, u64)| -> wasmtime::Result<Streamed<Vec<u8>>> {
                Ok((Err(StreamError::Closed),))
            },
        )?;
    }
    i.func_wrap(
        "[method]input-stream.subscribe",
        |_, (_,): (Resource<InputStream>,)| Ok((Resource::<Pollable>::new_own(0),)),
    )?;
    i.func_wrap(
        "[method]output-stream.check-write",
        |_, (_,): (Resource<OutputStream>,)| -> wasmtime::Result<Streamed<u64>> {
            Ok((Ok(MAX_CAPTURE_BYTES as u64),))
        },
    )?;
    for method in ["write", "blocking-write-and-flush"] {
        i.func_wrap(
            &format!("[method]output-stream.{method}"),
            |mut store,
             (stream, bytes): (Resource<OutputStream>, Vec<u8>)|
             -> wasmtime::Result<Streamed<()>> {
                store.data_mut().stdio.write(stream.rep(), &bytes);
                Ok((Ok(()),))
            },
        )?;
    }
    for method in ["flush", "blocking-flush"] {
        i.func_wrap(
            &format!("[method]output-stream.{method}"),
            |_, (_,): (Resource<OutputStream>,)| -> wasmtime::Result<Streamed<()>> {
                Ok((Ok(()),))
            },
        )?;
    }
    i.func_wrap(
        "[method]output-stream.subscribe",
        |_, (_,): (Resource<OutputStream>,)| Ok((Resource::<Pollable>::new_own(0),)),
    )?;

    let mut i = linker.instance(&v("wasi:cli/environment"))?;
    i.func_wrap("get-environment", |_, ()| {
        Ok((Vec::<(String, String)>::new(),))
    })?;
    i.func_wrap("get-arguments", |_, ()| Ok((Vec::<String>::new(),)))?;
    i.func_wrap("initial-cwd", |_, ()| Ok((None::<String>,)))?;

    let mut i = linker.instance(&v("wasi:cli/exit"))?;
    i.func_wrap(
        "exit",
        |_, (_,): (Result<(), ()>,)| -> wasmtime::Result<()> {
            Err(wasmtime::Error::new(PolicyExited))
        },
    )?;

    let mut i = linker.instance(&v("wasi:cli/stdin"))?;
    resource::<InputStream>(&mut i, "input-stream")?;
    i.func_wrap("get-stdin", |_, ()| {
        Ok((Resource::<InputStream>::new_own(0),))
    })?;
    for (name, rep) in [("stdout", STDOUT), ("stderr", STDERR)] {
        let mut i = linker.instance(&v(&format!("wasi:cli/{name}")))?;
        resource::<OutputStream>(&mut i, "output-stream")?;
        i.func_wrap(&format!("get-{name}"), move |_, ()| {
            Ok((Resource::<OutputStream>::new_own(rep),))
        })?;
    }

    let mut i = linker.instance(&v("wasi:cli/terminal-input"))?;
    resource::<TerminalInput>(&mut i, "terminal-input")?;
    let mut i = linker.instance(&v("wasi:cli/terminal-output"))?;
    resource::<TerminalOutput>(&mut i, "terminal-output")?;
    let mut i = linker.instance(&v("wasi:cli/terminal-stdin"))?;
    resource::<TerminalInput>(&mut i, "terminal-input")?;
    i.func_wrap("get-terminal-stdin", |_, ()| {
        Ok((None::<Resource<TerminalInput>>,))
    })?;
    for name in ["stdout", "stderr"] {
        let mut i = linker.instance(&v(&format!("wasi:cli/terminal-{name}")))?;
        resource::<TerminalOutput>(&mut i, "terminal-output")?;
        i.func_wrap(&format!("get-terminal-{name}"), |_, ()| {
            Ok((None::<Resource<TerminalOutput>>,))
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_is_bounded_and_stdout_is_dropped() {
        let mut c = Captured::default();
        c.write(STDOUT, b"hello");
        assert_eq!(c.panic_message(), None);
        c.write(STDERR, &[b'x'; 10_000]);
        assert_eq!(c.stderr.len(), MAX_CAPTURE_BYTES);
        c.write(STDERR, b"more");
        assert_eq!(c.stderr.len(), MAX_CAPTURE_BYTES);
    }

    #[test]
    fn panic_message_is_one_line() {
        let mut c = Captured::default();
        c.write(STDERR, b"\nthread '<unnamed>' panicked at src/lib.rs:3:5:\nboom\nnote: run with RUST_BACKTRACE\n");
        assert_eq!(
            c.panic_message().as_deref(),
            Some(
                "thread '<unnamed>' panicked at src/lib.rs:3:5: boom note: run with RUST_BACKTRACE"
            )
        );
    }
}
