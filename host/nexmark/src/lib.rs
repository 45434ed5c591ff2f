//! The Nexmark benchmark for Weir (`docs/nexmark.md`).
//!
//! - [`event`]: the three Nexmark event types, [`Person`], [`Auction`]
//!   and [`Bid`], and their one-JSON-object-per-record encoding
//!   ([`Event::write_json`], [`Event::from_json`]).
//! - [`generator`]: the standard Nexmark generator, deterministic per
//!   seed and event number, split `i of k` into event numbers
//!   `i, i + k, i + 2k, …` and resumable from a position
//!   ([`SplitGenerator`]).
//! - [`reference`](mod@reference): plain reference implementations of queries 0–5, 7
//!   and 8 over a slice of events, returning sorted canonical JSON lines
//!   that the query plugins' output is checked against.
//!
//! Pure data in, data out: no I/O, no tokio, no wasmtime. The crate
//! builds for `wasm32-wasip2` with serde, serde_json, rand and rand_pcg
//! alone, because Rust query plugins use its event types.

pub mod event;
pub mod generator;
pub mod reference;

pub use event::{Auction, Bid, Event, Person};
pub use generator::{ConfigError, GeneratorConfig, SplitGenerator};
