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
//! - [`stages`]: how the query plugins (`plugins/nexmark`,
//!   `plugins/python/nexmark`) run each query, stage by stage.
//!
//! Pure data in, data out: no I/O, no tokio, no wasmtime. The crate
//! builds for `wasm32-wasip2` with serde, serde_json, rand and rand_pcg
//! alone, because Rust query plugins use its event types.

pub mod event;
pub mod generator;
pub mod reference;

pub use event::{Auction, Bid, Event, Person};
pub use generator::{ConfigError, GeneratorConfig, SplitGenerator};

/// How the query plugins run `query` (`docs/nexmark.md`, "Running the
/// queries in Weir"): its stages in order, each the operator's config and
/// the partitioning of the edge into it (`forward` from the source, `hash`
/// where a stage keys its input). `None` for a query without stages.
pub fn stages(query: &str) -> Option<&'static [(&'static str, &'static str)]> {
    Some(match query {
        "q0" => &[("q0", "forward")],
        "q1" => &[("q1", "forward")],
        "q2" => &[("q2", "forward")],
        "q3" => &[("q3-key", "forward"), ("q3-join", "hash")],
        "q4" => &[
            ("q4-key", "forward"),
            ("q4-close", "hash"),
            ("q4-avg", "hash"),
        ],
        "q5" => &[
            ("bids-by-auction", "forward"),
            ("q5-count", "hash"),
            ("q5-max", "hash"),
        ],
        "q7" => &[("bids-by-window", "forward"), ("q7-max", "hash")],
        "q8" => &[("q8-key", "forward"), ("q8-join", "hash")],
        _ => return None,
    })
}
