//! `cargo run --example patterns` in CI: the example's scenarios, run as a test,
//! each outcome checked by the example itself (a line is `Err` when it differs).

#[path = "../examples/patterns.rs"]
#[allow(dead_code)] // the example's `main`
mod patterns;

#[tokio::test(start_paused = true)]
async fn every_pattern_behaves_as_its_scenario_expects() {
    let lines = patterns::run().await;
    assert_eq!(lines.len(), 4);
    let failures: Vec<String> = lines
        .iter()
        .filter_map(|(pattern, line)| line.as_ref().err().map(|why| format!("{pattern}: {why}")))
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");
    let (_, circuit) = &lines[0];
    assert!(
        circuit
            .as_ref()
            .unwrap()
            .starts_with("4 ok, 5 failed, 11 rejected"),
        "{circuit:?}"
    );
}
