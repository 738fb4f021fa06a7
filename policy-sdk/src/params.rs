//! Small readers for common params, with the validation rules every
//! example policy shares.

use serde_json::Value;

/// A valid amount: a JSON number greater than zero. A missing value, a
/// string (even `"9000"`), zero or a negative number is `None`.
pub fn amount(value: Option<&Value>) -> Option<f64> {
    value
        .and_then(Value::as_f64)
        .filter(|a| a.is_finite() && *a > 0.0)
}

/// Whether `list` holds `item`, ignoring ASCII case.
pub fn contains_ignore_case(list: &[String], item: &str) -> bool {
    list.iter().any(|x| x.eq_ignore_ascii_case(item))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_positive_numbers_are_amounts() {
        assert_eq!(amount(Some(&json!(12.5))), Some(12.5));
        assert_eq!(amount(Some(&json!(5000))), Some(5000.0));
        for bad in [json!("9000"), json!(0), json!(-5), json!(null), json!([1])] {
            assert_eq!(amount(Some(&bad)), None, "{bad}");
        }
        assert_eq!(amount(None), None);
    }
}
