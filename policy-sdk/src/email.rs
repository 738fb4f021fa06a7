//! E-mail recipient helpers with the strict matching the example policies
//! need: a value that only looks like an allowed address matches nothing.

use serde_json::Value;

/// The recipients found in one or more params, such as `to` and `cc`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Recipients<'a> {
    /// Each recipient: `Some(address)` for a string, `None` for a value that
    /// is not a string (a number, an object, a list inside the list).
    pub items: Vec<Option<&'a str>>,
}

impl<'a> Recipients<'a> {
    /// Collects the recipients of each `keys` param. A param that is missing,
    /// null, `""` or `[]` adds none; empty strings inside a list are ignored;
    /// any other value that is not a string or a list of strings adds a
    /// recipient that matches no domain.
    pub fn of(params: &'a Value, keys: &[&str]) -> Self {
        let mut items = Vec::new();
        let object = params.as_object();
        for key in keys {
            match object.and_then(|o| o.get(*key)) {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) => push_str(&mut items, s),
                Some(Value::Array(list)) => {
                    for v in list {
                        match v {
                            Value::String(s) => push_str(&mut items, s),
                            _ => items.push(None),
                        }
                    }
                }
                Some(_) => items.push(None),
            }
        }
        Recipients { items }
    }

    /// Whether there is no recipient at all.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Whether every recipient passes `ok`; a non-string recipient never does.
    pub fn all(&self, mut ok: impl FnMut(&str) -> bool) -> bool {
        self.items.iter().all(|r| r.is_some_and(&mut ok))
    }
}

fn push_str<'a>(items: &mut Vec<Option<&'a str>>, s: &'a str) {
    if !s.is_empty() {
        items.push(Some(s));
    }
}

/// The lower-cased domain of a well-formed address: exactly one `@`, a
/// non-empty part before it, and no white space, `,` or `;` anywhere.
/// `None` for anything else.
pub fn domain_of(address: &str) -> Option<String> {
    if address
        .chars()
        .any(|c| c.is_whitespace() || c == ',' || c == ';')
    {
        return None;
    }
    let (local, domain) = address.split_once('@')?;
    if local.is_empty() || domain.contains('@') {
        return None;
    }
    Some(domain.to_ascii_lowercase())
}

/// Whether a well-formed `address` is in one of `domains` exactly
/// (case-insensitive); subdomains and look-alikes are not.
pub fn in_domains(address: &str, domains: &[String]) -> bool {
    domain_of(address).is_some_and(|d| {
        domains
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(&d))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn domains_match_exactly() {
        let corp = vec!["corp.example".to_owned()];
        assert!(in_domains("a@corp.example", &corp));
        assert!(in_domains("Bob@CORP.Example", &corp));
        for bad in [
            "a@corp.example.evil.io",
            "a@evilcorp.example",
            "a@sub.corp.example",
            "eve@evil.io, bob@corp.example",
            "a@b@corp.example",
            "bob",
            "@corp.example",
            "a b@corp.example",
            "a@corp.example;",
        ] {
            assert!(!in_domains(bad, &corp), "{bad} must not match");
        }
    }

    #[test]
    fn recipients_from_strings_lists_and_junk() {
        let p = json!({"to": ["a@x", "", "b@y"], "cc": "c@z", "bcc": 3});
        assert_eq!(
            Recipients::of(&p, &["to", "cc"]).items,
            vec![Some("a@x"), Some("b@y"), Some("c@z")]
        );
        assert_eq!(Recipients::of(&p, &["bcc"]).items, vec![None]);
        for empty in [
            json!({}),
            json!({"to": null}),
            json!({"to": ""}),
            json!({"to": []}),
            json!([1]),
        ] {
            assert!(Recipients::of(&empty, &["to"]).is_empty(), "{empty}");
        }
        let nested = json!({"to": ["a@x", ["b@y"]]});
        assert!(!Recipients::of(&nested, &["to"]).all(|_| true));
    }
}
