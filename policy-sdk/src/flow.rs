//! Where data came from: asking the host which labels a value carries.
//!
//! The host keeps the fingerprints of the text of each labelled result a
//! session saw; [`labels_of`] asks it whether a value holds a copy of any
//! (verbatim, or differing only in case and whitespace). On a native
//! target, where there is no host, the answer comes from
//! [`answer_natively`], for unit tests.

use serde_json::Value;

/// The labels of this session's results that `value` holds a copy of.
pub fn labels_of(value: &str) -> Vec<String> {
    #[cfg(all(target_arch = "wasm32", not(feature = "contract-0-1")))]
    {
        crate::wit::arbiter::policy::flow::labels_of(value)
    }
    #[cfg(all(target_arch = "wasm32", feature = "contract-0-1"))]
    {
        // The 0.1.0 contract has no flow: nothing is known.
        let _ = value;
        Vec::new()
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        NATIVE.with(|f| f.borrow().as_ref().map_or_else(Vec::new, |f| f(value)))
    }
}

/// Each string in `params` that carries labels, by its JSON pointer
/// (`/body`, `/to/0`), with its labels; each string is asked on its own.
pub fn labels_in(params: &Value) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut stack = vec![(String::new(), params)];
    while let Some((path, v)) = stack.pop() {
        match v {
            Value::String(s) => {
                let labels = labels_of(s);
                if !labels.is_empty() {
                    out.push((path, labels));
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate().rev() {
                    stack.push((format!("{path}/{i}"), item));
                }
            }
            Value::Object(map) => {
                for (k, item) in map.iter().rev() {
                    let key = k.replace('~', "~0").replace('/', "~1");
                    stack.push((format!("{path}/{key}"), item));
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(not(target_arch = "wasm32"))]
type Answer = Box<dyn Fn(&str) -> Vec<String>>;

#[cfg(not(target_arch = "wasm32"))]
thread_local! {
    static NATIVE: std::cell::RefCell<Option<Answer>> = const { std::cell::RefCell::new(None) };
}

/// On a native target, makes [`labels_of`] answer with `answer` on this
/// thread: a policy's unit tests stand in for the host with it.
#[cfg(not(target_arch = "wasm32"))]
pub fn answer_natively(answer: impl Fn(&str) -> Vec<String> + 'static) {
    NATIVE.with(|f| *f.borrow_mut() = Some(Box::new(answer)));
}
