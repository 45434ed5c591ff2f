//! A test plugin that imports a WASI interface the host does not provide,
//! `wasi:keyvalue/store@0.2.0-draft`, so a host can be tested to refuse to
//! load or upload it and to name the missing import.
//!
//! Apart from that import it is a valid operator: it passes records on.
//! With config `kv` it looks every keyed record's key up in the store
//! first and emits the stored value in place of the record's when there is
//! one; calling `store::get` is what keeps the import in the component
//! (an import the code never calls is dropped when the component is made).
//! The interface is a one-function stand-in declared inline, not the real
//! WASI key-value proposal: only its name matters here.

use weir_sdk::{Context, Emitter, Error, Operator, Record};

/// Bindings for the imported interface; generated names stay private.
#[allow(missing_docs, unsafe_op_in_unsafe_fn, clippy::all)]
mod bindings {
    wit_bindgen::generate!({
        inline: r#"
            package wasi:keyvalue@0.2.0-draft;

            interface store {
                get: func(key: string) -> option<list<u8>>;
            }

            world kv {
                import store;
            }
        "#,
        world: "wasi:keyvalue/kv",
    });
}

use bindings::wasi::keyvalue::store;

/// Passes records on, through the key-value store when configured `kv`.
pub struct WasiKv {
    lookup: bool,
}

impl Operator for WasiKv {
    fn open(ctx: &Context) -> Result<Self, Error> {
        let lookup = match ctx.config().trim() {
            "" => false,
            "kv" => true,
            config => return Err(format!("unknown config `{config}`: expected `kv`").into()),
        };
        Ok(Self { lookup })
    }

    fn process(&mut self, record: Record<'_>, out: &mut Emitter) -> Result<(), Error> {
        let stored = match record.key {
            Some(key) if self.lookup => store::get(&String::from_utf8_lossy(key)),
            _ => None,
        };
        out.emit(record.key, stored.as_deref().unwrap_or(record.value));
        Ok(())
    }
}

weir_sdk::export!(WasiKv);

#[cfg(test)]
mod tests {
    use weir_sdk::testing::{Harness, TestRecord};

    use super::WasiKv;

    // Natively the store import is a stub that panics, so only the
    // configuration that never calls it runs here.
    #[test]
    fn passes_records_on() {
        let mut h = Harness::<WasiKv>::open("").unwrap();
        let input = [TestRecord::keyed("k", "v"), TestRecord::unkeyed("u")];
        assert_eq!(h.process(&input).unwrap(), input);
    }

    #[test]
    fn rejects_an_unknown_config() {
        assert!(Harness::<WasiKv>::open("bogus").is_err());
    }
}
