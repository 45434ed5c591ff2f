//! The Weir host: runs a job's dataflow of sources, Wasm operators and
//! sinks, and owns all operator state.
//!
//! Layering: only [`plugin`] touches wasmtime; [`keygroup`], [`state`] and
//! [`job`] are plain data and logic; [`runtime`] wires threads and channels;
//! [`connectors`] holds the built-in sources and sinks; [`serve`] hosts
//! many tenants' jobs in one process.

pub mod api;
pub mod checkpoint;
pub mod connectors;
pub mod error;
pub mod job;
pub mod keygroup;
pub mod metrics;
pub mod native;
pub mod plugin;
pub mod restart;
pub mod runtime;
pub mod savepoint;
pub mod serve;
pub mod snapshot;
pub mod state;
pub mod timers;
pub mod watermark;

pub use error::{Error, ErrorKind};
