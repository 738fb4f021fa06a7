//! The WASI imports that guest toolchains other than Rust leave in a
//! component (Go through the preview-1 adapter, for one), each handled
//! deliberately:
//!
//! - `wasi:filesystem` is linked with nothing in it: no preopened
//!   directories, so no descriptor can ever be opened; any other function
//!   of the interface traps if called.
//! - `wasi:clocks` and `wasi:random` are linked only for a policy granted
//!   them (`[policies.limits.wasi]`); a policy that imports them without
//!   the grant is refused at load, with the import named. Granted clocks
//!   read the host's time, but their pollables are ready at once: a policy
//!   can read the time, never wait on it.
//! - Everything else (`wasi:sockets`, `wasi:http`, ...) is never provided.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, ComponentType, Lift, Linker, Lower, Resource, ResourceType};

use super::sandbox::StoreState;
use super::stdio::{InputStream, IoError, LINKED_INTERFACES, OutputStream, Pollable, VERSION};

/// The WASI capabilities a policy may be granted, `[policies.limits.wasi]`.
/// Both default to off: a decision should depend on its inputs only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WasiGrants {
    /// Link `wasi:clocks` (wall clock and monotonic clock). The Go runtime
    /// needs it to start.
    pub clocks: bool,
    /// Link `wasi:random` (`random`, `insecure`, `insecure-seed`). The Go
    /// runtime needs it to start.
    pub random: bool,
}

/// The interfaces linked for every policy, besides [`LINKED_INTERFACES`].
const FILESYSTEM: &[&str] = &["wasi:filesystem/types", "wasi:filesystem/preopens"];
const CLOCKS: &[&str] = &["wasi:clocks/wall-clock", "wasi:clocks/monotonic-clock"];
const RANDOM: &[&str] = &[
    "wasi:random/random",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
];

/// At most this many random bytes per call: a hostile policy asking for
/// gigabytes gets a trap, not the host's memory.
const MAX_RANDOM_BYTES: u64 = 1 << 16;

/// Why an import is refused, in words for the load error; `None` when the
/// host links `unversioned` (an interface name without its `@version`).
pub(crate) fn refusal(unversioned: &str, grants: &WasiGrants) -> Option<String> {
    if LINKED_INTERFACES.contains(&unversioned) || FILESYSTEM.contains(&unversioned) {
        return None;
    }
    let grant = |granted: bool, key: &str| {
        (!granted).then(|| {
            format!("not granted to this policy; grant it with `wasi.{key} = true` in its limits")
        })
    };
    if CLOCKS.contains(&unversioned) {
        return grant(grants.clocks, "clocks");
    }
    if RANDOM.contains(&unversioned) {
        return grant(grants.random, "random");
    }
    Some("never provided to a policy".into())
}

/// `wasi:clocks/wall-clock.datetime`.
#[derive(ComponentType, Lift, Lower, Clone, Copy)]
#[component(record)]
struct Datetime {
    seconds: u64,
    nanoseconds: u32,
}

struct Descriptor;
struct DirectoryEntryStream;

/// Adds the filesystem with nothing in it, and the clocks and randomness
/// `grants` allows, to `linker`, with the functions of
/// `wasi:filesystem/types` that `component` imports as traps.
/// Run after [`super::stdio::add_to_linker`] and the import check,
/// which has refused anything outside these interfaces.
///
/// # Errors
/// Only if a definition clashes, which would be a bug here.
pub(crate) fn add_to_linker(
    linker: &mut Linker<StoreState>,
    engine: &wasmtime::Engine,
    grants: &WasiGrants,
    component: &Component,
) -> wasmtime::Result<()> {
    let v = |name: &str| format!("{name}@{VERSION}");

    filesystem_types(linker, engine, component)?;
    let mut i = linker.instance(&v("wasi:filesystem/preopens"))?;
    i.resource("descriptor", ResourceType::host::<Descriptor>(), |_, _| {
        Ok(())
    })?;
    i.func_wrap("get-directories", |_, ()| {
        Ok((Vec::<(Resource<Descriptor>, String)>::new(),))
    })?;

    if grants.clocks {
        let mut i = linker.instance(&v("wasi:clocks/wall-clock"))?;
        i.func_wrap("now", |_, ()| {
            let since = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            Ok((Datetime {
                seconds: since.as_secs(),
                nanoseconds: since.subsec_nanos(),
            },))
        })?;
        i.func_wrap("resolution", |_, ()| {
            Ok((Datetime {
                seconds: 0,
                nanoseconds: 1,
            },))
        })?;
        let mut i = linker.instance(&v("wasi:clocks/monotonic-clock"))?;
        i.resource("pollable", ResourceType::host::<Pollable>(), |_, _| Ok(()))?;
        i.func_wrap("now", |_, ()| Ok((monotonic_nanos(),)))?;
        i.func_wrap("resolution", |_, ()| Ok((1_u64,)))?;
        for name in ["subscribe-instant", "subscribe-duration"] {
            i.func_wrap(name, |_, (_,): (u64,)| {
                Ok((Resource::<Pollable>::new_own(0),))
            })?;
        }
    }

    if grants.random {
        let mut i = linker.instance(&v("wasi:random/random"))?;
        i.func_wrap("get-random-bytes", |_, (len,): (u64,)| random_bytes(len))?;
        i.func_wrap("get-random-u64", |_, ()| Ok((random_u64()?,)))?;
        let mut i = linker.instance(&v("wasi:random/insecure"))?;
        i.func_wrap("get-insecure-random-bytes", |_, (len,): (u64,)| {
            random_bytes(len)
        })?;
        i.func_wrap("get-insecure-random-u64", |_, ()| Ok((random_u64()?,)))?;
        let mut i = linker.instance(&v("wasi:random/insecure-seed"))?;
        i.func_wrap("insecure-seed", |_, ()| {
            Ok(((random_u64()?, random_u64()?),))
        })?;
    }

    Ok(())
}

/// `wasi:filesystem/types` as `component` imports it: its resources, and a
/// trap for each function it imports. With no preopened directory there is
/// no descriptor to call them on, so the traps are never reached by a
/// component that only starts up.
fn filesystem_types(
    linker: &mut Linker<StoreState>,
    engine: &wasmtime::Engine,
    component: &Component,
) -> wasmtime::Result<()> {
    for (name, item) in component.component_type().imports(engine) {
        if name.split('@').next() != Some("wasi:filesystem/types") {
            continue;
        }
        let ComponentItem::ComponentInstance(ty) = item.ty else {
            continue;
        };
        // Defined under the imported version itself: a trap defined at
        // another version would not be found for it.
        let mut i = linker.instance(name)?;
        // The same host types as `wasi:io`, which this interface `use`s.
        i.resource("error", ResourceType::host::<IoError>(), |_, _| Ok(()))?;
        i.resource(
            "input-stream",
            ResourceType::host::<InputStream>(),
            |_, _| Ok(()),
        )?;
        i.resource(
            "output-stream",
            ResourceType::host::<OutputStream>(),
            |_, _| Ok(()),
        )?;
        i.resource("descriptor", ResourceType::host::<Descriptor>(), |_, _| {
            Ok(())
        })?;
        i.resource(
            "directory-entry-stream",
            ResourceType::host::<DirectoryEntryStream>(),
            |_, _| Ok(()),
        )?;
        for (function, item) in ty.exports(engine) {
            if matches!(item.ty, ComponentItem::ComponentFunc(_)) {
                let function = function.to_owned();
                i.func_new(&function.clone(), move |_, _, _, _| {
                    wasmtime::bail!("`{function}`: policies have no filesystem")
                })?;
            }
        }
    }
    Ok(())
}

fn monotonic_nanos() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

fn random_bytes(len: u64) -> wasmtime::Result<(Vec<u8>,)> {
    if len > MAX_RANDOM_BYTES {
        wasmtime::bail!("the policy asked for {len} random bytes; at most {MAX_RANDOM_BYTES}");
    }
    let mut bytes = vec![0; usize::try_from(len)?];
    getrandom::fill(&mut bytes).map_err(|e| wasmtime::format_err!("no randomness: {e}"))?;
    Ok((bytes,))
}

fn random_u64() -> wasmtime::Result<u64> {
    let mut bytes = [0; 8];
    getrandom::fill(&mut bytes).map_err(|e| wasmtime::format_err!("no randomness: {e}"))?;
    Ok(u64::from_le_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_grant_or_say_never() {
        let none = WasiGrants::default();
        assert_eq!(refusal("wasi:filesystem/preopens", &none), None);
        assert_eq!(refusal("wasi:cli/stdout", &none), None);
        let clock = refusal("wasi:clocks/wall-clock", &none).expect("refused");
        assert!(clock.contains("`wasi.clocks = true`"), "{clock}");
        let random = refusal("wasi:random/random", &none).expect("refused");
        assert!(random.contains("`wasi.random = true`"), "{random}");
        let all = WasiGrants {
            clocks: true,
            random: true,
        };
        assert_eq!(refusal("wasi:clocks/monotonic-clock", &all), None);
        assert_eq!(refusal("wasi:random/insecure-seed", &all), None);
        for never in ["wasi:sockets/tcp", "wasi:http/outgoing-handler", "acme:x/y"] {
            assert!(
                refusal(never, &all).is_some_and(|r| r.starts_with("never provided")),
                "{never}"
            );
        }
    }

    #[test]
    fn random_bytes_are_bounded() {
        assert_eq!(random_bytes(32).expect("bytes").0.len(), 32);
        assert!(random_bytes(MAX_RANDOM_BYTES + 1).is_err());
    }
}
