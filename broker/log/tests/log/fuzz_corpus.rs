//! Replays the committed fuzz corpus (`broker/log/fuzz/corpus/<target>/`) through the fuzz entry points, so stable
//! `cargo test` exercises every input the fuzzer found interesting (and every seed) on every run.

use std::path::PathBuf;

/// Runs every input in a target's corpus through its entry point; any panic fails the test.
fn check_corpus(target: &str, run: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut n_inputs = 0;
    for entry in std::fs::read_dir(&dir).expect("the corpus directory exists") {
        let input = std::fs::read(entry.expect("corpus entry").path()).expect("corpus file is readable");
        run(&input);
        n_inputs += 1;
    }
    assert!(n_inputs >= 10, "{target} corpus has only {n_inputs} inputs");
}

#[test]
fn the_producer_table_corpus_agrees_with_the_model() {
    check_corpus("producer_table", ferry_log::fuzz::producer_table);
}
