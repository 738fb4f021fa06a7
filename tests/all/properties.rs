//! Property tests of what parses input from the network: no input makes
//! them panic, and what they produce is stable.

use arbiter::front_door::ext_authz::normalize_path;
use proptest::prelude::*;

/// Paths built from the pieces that make normalization hard: slashes,
/// dots, escapes good and bad, reserved and odd characters.
fn path_like() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("/".to_owned()),
        Just("//".to_owned()),
        Just(".".to_owned()),
        Just("..".to_owned()),
        Just("%2e".to_owned()),
        Just("%2E%2e".to_owned()),
        Just("%2f".to_owned()),
        Just("%5C".to_owned()),
        Just("%00".to_owned()),
        Just("%".to_owned()),
        Just("%4".to_owned()),
        Just("%zz".to_owned()),
        Just("%41".to_owned()),
        Just("%3f".to_owned()),
        Just(";".to_owned()),
        Just("\\".to_owned()),
        Just("~".to_owned()),
        "[a-z]{1,3}",
        any::<char>().prop_map(String::from),
    ];
    proptest::collection::vec(piece, 0..12).prop_map(|p| p.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn normalizing_a_path_never_panics_and_is_stable(raw in path_like()) {
        if let Ok(once) = normalize_path(&raw) {
            let twice = normalize_path(&once);
            prop_assert_eq!(twice.as_deref(), Ok(once.as_str()));
            prop_assert!(once.starts_with('/'));
            prop_assert!(!once.contains("//"), "{}", once);
            prop_assert!(!once.split('/').any(|s| s == "." || s == ".."), "{}", once);
        }
    }

    #[test]
    fn any_string_as_a_path_never_panics(raw in any::<String>()) {
        let _ = normalize_path(&raw);
        let _ = normalize_path(&format!("/{raw}"));
    }
}
