//! Typed settings, with errors that name the key.

use std::fmt;

use serde::de::DeserializeOwned;

/// Settings that do not parse, with the path of the key at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsError {
    /// Where the problem is, e.g. `tables[2]`; empty for the document itself.
    pub key: String,
    /// What is wrong there.
    pub message: String,
}

impl fmt::Display for SettingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "settings: {}", self.message)
        } else {
            write!(f, "settings key `{}`: {}", self.key, self.message)
        }
    }
}

impl std::error::Error for SettingsError {}

/// Parses settings JSON into `S`. An empty string or `null` counts as `{}`,
/// so a policy configured without settings takes its defaults.
///
/// # Errors
/// A [`SettingsError`] naming the key whose value is missing, unknown or of
/// the wrong type.
pub fn parse_settings<S: DeserializeOwned>(json: &str) -> Result<S, SettingsError> {
    let json = match json.trim() {
        "" | "null" => "{}",
        other => other,
    };
    let de = &mut serde_json::Deserializer::from_str(json);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let mut message = e.into_inner().to_string();
        // Settings are one short document; the position adds nothing to
        // the key.
        if let Some(i) = message.rfind(" at line ") {
            message.truncate(i);
        }
        SettingsError {
            // serde_path_to_error writes "." for the root and "?" when
            // the document broke before any key.
            key: if key == "." || key == "?" {
                String::new()
            } else {
                key
            },
            message,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct S {
        tables: Vec<String>,
        limit: u32,
    }

    impl Default for S {
        fn default() -> Self {
            S {
                tables: vec!["orders".into()],
                limit: 5,
            }
        }
    }

    #[test]
    fn empty_and_null_take_defaults() {
        assert_eq!(parse_settings::<S>("").expect("defaults"), S::default());
        assert_eq!(parse_settings::<S>("null").expect("defaults"), S::default());
        assert_eq!(
            parse_settings::<S>(r#"{"limit": 7}"#)
                .expect("parses")
                .limit,
            7
        );
    }

    #[test]
    fn wrong_type_names_the_key() {
        let e = parse_settings::<S>(r#"{"tables": ["a", 3]}"#).expect_err("refused");
        assert_eq!(e.key, "tables[1]");
        assert_eq!(
            e.to_string(),
            "settings key `tables[1]`: invalid type: integer `3`, expected a string"
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let e = parse_settings::<S>(r#"{"tabels": []}"#).expect_err("refused");
        assert!(e.message.contains("unknown field `tabels`"), "{e}");
    }

    #[test]
    fn not_json_is_refused() {
        let e = parse_settings::<S>("{").expect_err("refused");
        assert_eq!(e.key, "");
        assert!(e.to_string().starts_with("settings: EOF"), "{e}");
    }
}
