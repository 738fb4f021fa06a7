//! Every variant of the peer benchmark answers every procurement case of
//! `tests/cases.json` as the scenario says: the benchmark times nothing
//! that decides wrong, and CI checks the answers without timing them.

use arbiter_peers::{Variant, cases_path, check, procurement_cases, variants};

#[test]
fn every_variant_answers_every_procurement_case() {
    let cases = procurement_cases(&cases_path()).expect("cases");
    assert!(cases.len() >= 20, "only {} procurement cases", cases.len());
    let mut failures = Vec::new();
    for variant in variants() {
        if let Err(wrong) = check(&variant, &cases) {
            failures.push(format!("{}:\n  {}", variant.name, wrong.join("\n  ")));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_variant_that_decides_wrong_is_caught() {
    let cases = procurement_cases(&cases_path()).expect("cases");
    // The right engine with the wrong settings: transfers need approval
    // from $1, so the case at $4,999.50 must be reported.
    let wrong = Variant {
        name: "Rego with a lower approval threshold",
        load: |_| {
            let rvm = variants()
                .into_iter()
                .find(|v| v.name == "Rego (regorus RVM)");
            (rvm.expect("the RVM variant").load)(&serde_json::json!({"approval_over": 1}))
        },
    };
    let report = check(&wrong, &cases).expect_err("caught");
    assert!(
        report
            .iter()
            .any(|l| l.contains("transfer under threshold")),
        "{report:?}"
    );
}
