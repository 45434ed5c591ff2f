//! Paths of the example plugins, built to `wasm32-wasip2` components by
//! this crate's `build.rs` (a nested `cargo build` under `OUT_DIR`).
//!
//! Tests and benchmarks depend on this crate and load the files at these
//! paths; nothing else builds `.wasm` files, and none are committed.
//!
//! ```
//! for (name, path) in weir_test_plugins::all() {
//!     assert!(std::path::Path::new(path).exists(), "{name}");
//! }
//! ```

include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
