//! Every byte layout Weir keeps or that more than one party reads: the
//! packed record batch that crosses the host/guest boundary
//! (`docs/wit.md`), the one typed state [`Value`] host and guests share,
//! type descriptors and declared states, and the snapshot files —
//! checkpoint and savepoint state files and `_metadata`
//! (`docs/checkpoint-format.md`, `docs/savepoint-format.md`).
//!
//! Pure data in, bytes out: no I/O, no tokio, no wasmtime. The crate
//! builds for `wasm32-wasip2` with serde, postcard, serde_json and
//! xxhash alone, because the guest SDK and the fuzz targets use it too.

pub mod batch;
pub mod checkpoint;
pub mod declared;
pub mod descriptor;
pub mod frame;
pub mod jobdir;
pub mod manifest;
pub mod savepoint;
pub mod snapshot;
pub mod state;
pub mod value;
pub mod writes;

pub use batch::{BatchReader, BatchWriter, DecodeError, RecordRef};
pub use frame::FormatError;
pub use value::Value;
