//! Fuzz target `checkpoint_state_file`: arbitrary bytes through [`weir_fuzz::checkpoint_state_file`],
//! which hands them to every decoder of that kind of file; none may panic.
//! How to run it: docs/fuzzing.md.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| weir_fuzz::checkpoint_state_file(data));
