//! The fuzz targets' kept corpus (`fuzz/corpus/<target>/`), replayed on
//! stable: every input that fuzzing found interesting runs through the same
//! target body again, and must return without a panic.

use std::path::PathBuf;

#[test]
fn the_kept_corpus_of_every_fuzz_target_replays_without_a_panic() {
    let corpus = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    for (name, target) in imaged::fuzzing::TARGETS {
        let dir = corpus.join(name);
        let inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .collect();
        assert!(!inputs.is_empty(), "no corpus for fuzz target {name}");
        for input in &inputs {
            target(&std::fs::read(input).unwrap());
        }
        println!("{name}: {} inputs", inputs.len());
    }
}
