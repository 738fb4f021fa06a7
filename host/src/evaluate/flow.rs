//! The host's `arbiter:policy/flow` import: `labels-of`, answered from the
//! session's flow as it was when the decision started, so it is pure for
//! the decision. Each question costs fuel by the bytes asked about, a call
//! may ask a bounded number of them, and every question is kept (the value
//! only as its hash) for the decision record and a replay.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use wasmtime::component::Linker;
use wasmtime::{StoreContextMut, Trap};

use super::sandbox::StoreState;
use crate::flow::{LabelQuery, Query};

/// Fuel one question costs before its bytes: a host call is not free.
const QUESTION_FUEL: u64 = 10_000;
/// The most questions one call may ask; past it the policy fails.
pub const MAX_QUESTIONS: usize = 1024;

/// What a call may ask about, and what it asked.
#[derive(Default)]
pub(crate) struct Asked {
    /// `None` when the host keeps no flow: every answer is empty.
    pub(crate) query: Option<Arc<dyn LabelQuery>>,
    pub(crate) questions: Vec<Query>,
}

impl Asked {
    /// Ready for a call that may ask `query`.
    pub(crate) fn arm(&mut self, query: Option<Arc<dyn LabelQuery>>) {
        self.query = query;
        self.questions.clear();
    }
}

/// Links `labels-of` into `linker`.
pub(super) fn add_to_linker(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
    let mut flow = linker.instance(&format!(
        "{}@{}",
        super::FLOW_INTERFACE,
        super::CONTRACTS[0]
    ))?;
    flow.func_wrap(
        "labels-of",
        |mut store: StoreContextMut<'_, StoreState>, (value,): (String,)| {
            let cost = QUESTION_FUEL.saturating_add(value.len() as u64);
            let left = store.get_fuel()?;
            if left < cost {
                store.set_fuel(0)?;
                return Err(wasmtime::Error::new(Trap::OutOfFuel));
            }
            store.set_fuel(left - cost)?;
            let asked = &mut store.data_mut().flow;
            if asked.questions.len() >= MAX_QUESTIONS {
                wasmtime::bail!(
                    "the policy asked labels-of more than {MAX_QUESTIONS} times in one decision"
                );
            }
            let labels = asked
                .query
                .as_ref()
                .map_or_else(Vec::new, |q| q.labels_of(&value));
            let value_sha256 = format!(
                "sha256:{}",
                crate::hex::encode(&Sha256::digest(value.as_bytes()))
            );
            if !asked
                .questions
                .iter()
                .any(|q| q.value_sha256 == value_sha256)
            {
                asked.questions.push(Query {
                    value_sha256,
                    labels: labels.clone(),
                });
            }
            Ok((labels,))
        },
    )
}
