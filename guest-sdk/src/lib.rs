//! Write Weir stream operators in Rust.
//!
//! Implement [`Operator`], hand the type to [`export!`], and build the crate
//! as a `cdylib` for `wasm32-wasip2`. The SDK owns the WIT bindings (users
//! never see generated names), decodes the host's packed batches without
//! copying, sends each hook's output as one packed batch, and gives typed
//! keyed state ([`ValueState`], [`MapState`], [`ListState`]) and operator
//! state ([`OperatorListState`]) backed by write-back caches in guest
//! memory, flushed to the host when `snapshot` and `close` return.
//! `docs/sdk.md` explains why (host calls per record cost more than the
//! work) and how to write a plugin.
//!
//! ```
//! use weir_sdk::{Context, Emitter, Error, Operator, Record, ValueState};
//!
//! /// Counts records per key.
//! struct WordCount {
//!     count: ValueState<i64>,
//! }
//!
//! impl Operator for WordCount {
//!     fn open(_ctx: &Context) -> Result<Self, Error> {
//!         Ok(Self { count: ValueState::new("count")? })
//!     }
//!
//!     fn process(&mut self, record: Record<'_>, out: &mut Emitter) -> Result<(), Error> {
//!         let count = self.count.get()?.unwrap_or(0) + 1;
//!         self.count.set(count)?;
//!         out.emit(record.key, count.to_string().as_bytes());
//!         Ok(())
//!     }
//! }
//!
//! weir_sdk::export!(WordCount);
//! ```
//!
//! This crate compiles natively too (wit-bindgen's imports become stubs),
//! so plugins are checked by `cargo clippy --workspace` and tested with
//! [`testing::Harness`].

mod cache;
pub mod declare;
mod error;
mod host;
mod log;
mod runtime;
mod state;
pub mod structured;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;
pub mod time;
mod value;
pub mod window;

pub use declare::{Declaration, DeclaredKind, Describe, Redistribution};
pub use error::Error;
pub use log::{Level, log};
pub use runtime::{Context, Emitter, Operator, Record};
pub use state::{ListState, MapState, OperatorListState, ValueState};
pub use structured::Structured;
pub use time::{TimeDomain, Timer};
pub use value::{StateValue, Value, ValueRef};

#[cfg_attr(not(target_arch = "wasm32"), allow(unused_imports))]
use __private::bindings;

/// Not public API: what [`export!`] expands to.
#[doc(hidden)]
pub mod __private {
    use std::marker::PhantomData;

    /// The generated bindings.
    #[allow(missing_docs, unsafe_op_in_unsafe_fn, clippy::all)]
    pub mod bindings {
        wit_bindgen::generate!({
            world: "stream-operator",
            path: "../wit",
            pub_export_macro: true,
            export_macro_name: "__export",
            default_bindings_module: "weir_sdk::__private::bindings",
            ownership: Borrowing { duplicate_if_necessary: true },
        });
    }

    use crate::{Context, Operator, runtime};
    use bindings::exports::weir::operator::operator::{Guest, OperatorContext, TimeDomain};

    /// Implements the generated `Guest` trait for operator `O`.
    pub struct Adapter<O>(PhantomData<O>);

    impl<O: Operator> Guest for Adapter<O> {
        fn open(context: OperatorContext) -> Result<(), String> {
            let ctx = Context::new(context.uid, context.config)
                .with_subtask(
                    context.subtask_index,
                    context.parallelism,
                    context.max_parallelism,
                )
                .with_attempt_number(context.attempt_number);
            runtime::open::<O>(&ctx).map_err(|e| e.to_string())
        }
        fn process(batch: Vec<u8>) -> Result<(), String> {
            runtime::process(&batch).map_err(|e| e.to_string())
        }
        fn snapshot(checkpoint_id: u64) -> Result<(), String> {
            runtime::snapshot(checkpoint_id).map_err(|e| e.to_string())
        }
        fn on_checkpoint_complete(checkpoint_id: u64) -> Result<(), String> {
            runtime::on_checkpoint_complete(checkpoint_id).map_err(|e| e.to_string())
        }
        fn close() -> Result<(), String> {
            runtime::close().map_err(|e| e.to_string())
        }
        fn on_watermark(watermark: i64) -> Result<(), String> {
            runtime::on_watermark(watermark).map_err(|e| e.to_string())
        }
        fn on_timer(key: Vec<u8>, timestamp: i64, domain: TimeDomain) -> Result<(), String> {
            let domain = match domain {
                TimeDomain::EventTime => crate::time::TimeDomain::EventTime,
                TimeDomain::ProcessingTime => crate::time::TimeDomain::ProcessingTime,
            };
            runtime::on_timer(&key, timestamp, domain).map_err(|e| e.to_string())
        }
    }
}

/// Exports an [`Operator`] type as the component's `weir:operator/operator`
/// implementation. Invoke it once, at the crate root of a `cdylib`.
///
/// ```
/// use weir_sdk::{Context, Emitter, Error, Operator, Record};
///
/// struct Identity;
///
/// impl Operator for Identity {
///     fn open(_: &Context) -> Result<Self, Error> {
///         Ok(Identity)
///     }
///     fn process(&mut self, r: Record<'_>, out: &mut Emitter) -> Result<(), Error> {
///         out.emit(r.key, r.value);
///         Ok(())
///     }
/// }
///
/// weir_sdk::export!(Identity);
/// ```
#[macro_export]
macro_rules! export {
    ($operator:ty) => {
        const _: () = {
            type __WeirAdapter = $crate::__private::Adapter<$operator>;
            $crate::__private::bindings::__export!(
                __WeirAdapter with_types_in $crate::__private::bindings
            );
        };
    };
}

// The tests drive `testing::Harness`, which exists only natively.
#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests;
