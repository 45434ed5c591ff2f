//! Weir's byte layouts that more than one party reads: today the packed
//! record batch that crosses the host/guest boundary (`docs/wit.md`).
//!
//! This crate must stay free of tokio, wasmtime and anything else a guest
//! compiled to `wasm32-wasip2` could not build, because the guest SDK uses
//! it too.

pub mod batch;

pub use batch::{BatchReader, BatchWriter, DecodeError, RecordRef};
