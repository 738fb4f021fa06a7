//! The Rust SDK for Arbiter policies.
//!
//! A policy is a type that implements [`Policy`]: typed settings (serde) and
//! one pure function from an [`Action`] and its [`Context`] to a
//! [`Decision`]. [`export_policy!`] turns it into the `arbiter:policy`
//! component when built for `wasm32-wasip2`; on any other target the macro
//! expands to nothing, so the same code unit-tests natively with
//! `cargo test`.
//!
//! ```
//! use arbiter_sdk::{Action, Context, Decision, Policy};
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! #[serde(default, deny_unknown_fields)]
//! pub struct Settings {
//!     blocked: Vec<String>,
//! }
//!
//! impl Default for Settings {
//!     fn default() -> Self {
//!         Settings { blocked: vec!["crm.export".into()] }
//!     }
//! }
//!
//! pub struct Blocklist;
//!
//! impl Policy for Blocklist {
//!     type Settings = Settings;
//!
//!     fn evaluate(settings: &Settings, action: &Action, _context: &Context) -> Decision {
//!         if settings.blocked.iter().any(|b| *b == action.name) {
//!             return Decision::deny("tool.blocked", "This tool is blocked.", 80);
//!         }
//!         Decision::allow("default.allow", "Nothing forbids it.")
//!     }
//! }
//!
//! arbiter_sdk::export_policy!(Blocklist);
//!
//! // The same function, tested natively:
//! let action = Action::new("tool", "crm.export");
//! let decision = Blocklist::evaluate(&Settings::default(), &action, &Context::default());
//! assert_eq!(decision.rule, "tool.blocked");
//! ```
#![deny(missing_docs)]

mod email;
pub mod flow;
mod params;
mod settings;
mod types;

pub use email::{Recipients, domain_of, in_domains};
pub use flow::{labels_in, labels_of};
pub use params::{amount, contains_ignore_case};
pub use settings::{SettingsError, parse_settings};
pub use types::{Action, Context, Decision, History, Label, Origin, Outcome, Principal};

use serde::de::DeserializeOwned;

/// A policy: typed settings and a pure decision function.
pub trait Policy {
    /// This policy's settings. A key missing from the configuration should
    /// take its default (`#[serde(default)]`); an unknown key or a value of
    /// the wrong type is refused at load with a message naming the key.
    type Settings: DeserializeOwned;

    /// Decides one action. Called on a fresh instance for every decision.
    fn evaluate(settings: &Self::Settings, action: &Action, context: &Context) -> Decision;
}

/// The generated bindings. Policy authors never need them: use
/// [`export_policy!`].
#[cfg(all(target_arch = "wasm32", not(feature = "contract-0-1")))]
#[doc(hidden)]
#[allow(missing_docs, unused_qualifications, clippy::all)]
pub mod wit {
    wit_bindgen::generate!({
        path: "../wit",
        world: "policy",
        pub_export_macro: true,
        export_macro_name: "__arbiter_export_world",
        default_bindings_module: "arbiter_sdk::wit",
    });
}

/// The bindings of the first contract, for a component that must load on
/// a host that serves only `arbiter:policy@0.1.0` (feature `contract-0-1`).
#[cfg(all(target_arch = "wasm32", feature = "contract-0-1"))]
#[doc(hidden)]
#[allow(missing_docs, unused_qualifications, clippy::all)]
pub mod wit {
    wit_bindgen::generate!({
        path: "../wit/v0.1.0",
        world: "policy",
        pub_export_macro: true,
        export_macro_name: "__arbiter_export_world",
        default_bindings_module: "arbiter_sdk::wit",
    });
}

/// Glue between the generated bindings and [`Policy`]; not a public API.
#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod __private {
    use super::*;
    use crate::wit::arbiter::policy::types as w;

    pub fn validate_settings<P: Policy>(settings: &str) -> Result<(), String> {
        parse_settings::<P::Settings>(settings)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    pub fn evaluate<P: Policy>(action: w::Action, context: w::Context) -> w::Decision {
        let decision = match parse_settings::<P::Settings>(&context.settings) {
            Ok(settings) => P::evaluate(&settings, &action.into(), &context.into()),
            // The host validates settings at load, so this only happens if
            // it skipped that step; refuse rather than guess.
            Err(e) => Decision::deny("settings.invalid", e.to_string(), 100),
        };
        #[cfg(feature = "contract-0-1")]
        if !decision.labels.is_empty() {
            // The first contract cannot carry labels: refuse rather than
            // drop them.
            return Decision::deny(
                "labels.unsupported",
                "This policy attaches labels, which need the arbiter:policy@0.2.0 contract.",
                100,
            )
            .into();
        }
        decision.into()
    }

    impl From<w::Action> for Action {
        fn from(a: w::Action) -> Self {
            Action {
                params: serde_json::from_str(&a.params).unwrap_or(serde_json::Value::Null),
                kind: a.kind,
                name: a.name,
                target: a.target,
            }
        }
    }

    impl From<w::Principal> for Principal {
        fn from(p: w::Principal) -> Self {
            Principal {
                id: p.id,
                roles: p.roles,
            }
        }
    }

    impl From<w::Context> for Context {
        fn from(c: w::Context) -> Self {
            let h = c.history;
            Context {
                agent: c.agent.into(),
                user: c.user.map(Into::into),
                environment: c.environment,
                session: c.session,
                attributes: c.attributes,
                history: History {
                    calls_last_minute: h.calls_last_minute,
                    same_action_last_minute: h.same_action_last_minute,
                    denials_last_hour: h.denials_last_hour,
                    spend_today_cents: h.spend_today_cents,
                },
                #[cfg(not(feature = "contract-0-1"))]
                labels: c
                    .labels
                    .into_iter()
                    .map(|l| Label {
                        name: l.name,
                        origin: Origin {
                            decision_id: l.origin.decision_id,
                            kind: l.origin.kind,
                            name: l.origin.name,
                            target: l.origin.target,
                            at_ms: l.origin.at_ms,
                        },
                    })
                    .collect(),
                #[cfg(feature = "contract-0-1")]
                labels: Vec::new(),
            }
        }
    }

    impl From<Decision> for w::Decision {
        fn from(d: Decision) -> Self {
            w::Decision {
                outcome: match d.outcome {
                    Outcome::Allow => w::Outcome::Allow,
                    Outcome::Deny => w::Outcome::Deny,
                    Outcome::RequireApproval => w::Outcome::RequireApproval,
                    Outcome::Modify => w::Outcome::Modify,
                },
                reason: d.reason,
                rule: d.rule,
                risk: d.risk,
                params: d.params.map(|p| p.to_string()),
                #[cfg(not(feature = "contract-0-1"))]
                labels: d.labels,
            }
        }
    }
}

/// Exports a [`Policy`] as the `arbiter:policy` component.
///
/// Use it once per crate, at the top level. It expands to nothing when the
/// target is not wasm32, so the crate still builds and tests natively.
#[macro_export]
macro_rules! export_policy {
    ($policy:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct __ArbiterExport;

            impl $crate::wit::Guest for __ArbiterExport {
                fn validate_settings(settings: String) -> Result<(), String> {
                    $crate::__private::validate_settings::<$policy>(&settings)
                }

                fn evaluate(
                    action: $crate::wit::arbiter::policy::types::Action,
                    context: $crate::wit::arbiter::policy::types::Context,
                ) -> $crate::wit::arbiter::policy::types::Decision {
                    $crate::__private::evaluate::<$policy>(action, context)
                }
            }

    $crate::wit::__arbiter_export_world!(__ArbiterExport with_types_in $crate::wit);
        };
    };
}

/// Parses settings for a policy that has none: only `{}` (or nothing) is
/// accepted, so a typo in the configuration is caught at load.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoSettings {}
