//! Glob patterns of routes and trust scopes: `*` any run of characters,
//! `?` one character, anything else itself.

/// Matches `text` against `pattern`, where `*` is any run of characters
/// (including none) and `?` exactly one. At worst O(pattern × text), with
/// no recursion, so a hostile action name cannot make matching explode.
pub fn glob(pattern: &str, text: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    // Byte-wise is exact when both are ASCII, and allocates nothing;
    // otherwise `?` must match a whole character.
    if pattern.is_ascii() && text.is_ascii() {
        glob_slices(pattern.as_bytes(), text.as_bytes(), b'*', b'?')
    } else {
        let p: Vec<char> = pattern.chars().collect();
        let t: Vec<char> = text.chars().collect();
        glob_slices(&p, &t, '*', '?')
    }
}

fn glob_slices<T: Copy + PartialEq>(p: &[T], t: &[T], star_sym: T, any: T) -> bool {
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was, and where in the text it started matching.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == any || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == star_sym {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == star_sym)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let cases = [
            ("*", "", true),
            ("*", "anything", true),
            ("payments.*", "payments.transfer", true),
            ("payments.*", "payments", false),
            ("*.transfer", "payments.transfer", true),
            ("send_?mail", "send_email", true),
            ("send_?mail", "send_mail", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("db", "db", true),
            ("db", "dbx", false),
            ("", "", true),
            ("", "x", false),
            ("**", "x", true),
            ("caf?", "café", true),
            ("*é", "café", true),
            ("?", "é", true),
        ];
        for (pattern, text, want) in cases {
            assert_eq!(glob(pattern, text), want, "{pattern:?} vs {text:?}");
        }
    }
}
