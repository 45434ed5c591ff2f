//! Records per key and window, in Rust: the twin of the Python
//! `plugins/python/session-count` and the JavaScript
//! `plugins/js/tumbling-count`, for the cross-language window tests.
//!
//! Config: JSON, `{"gap": 3000}` for session windows or `{"size": 10000}`
//! for tumbling ones. Each window emits one record when the watermark
//! passes its end, keyed by the key, with timestamp `end - 1` and the
//! value `<key>,<start>,<end>,<count>`. Late records are dropped and
//! counted in `late_records_dropped`. The windows live in the state layout
//! every SDK shares (docs/sdk.md, "Windows").

use serde::Deserialize;
use weir_sdk::window::{Assigner, Window, WindowConfig, WindowFunction, Windowed};
use weir_sdk::{Context, Error, Record};

/// The config.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    gap: Option<i64>,
    size: Option<i64>,
}

/// Counts records per key and window.
pub struct Count;

impl WindowFunction for Count {
    type Acc = i64;

    fn open(ctx: &Context) -> Result<(Self, WindowConfig), Error> {
        let config: Config = serde_json::from_str(ctx.config()).map_err(|e| {
            Error::msg(format!(
                "window-count: config is JSON like {{\"gap\": 3000}}: {e}"
            ))
        })?;
        let assigner = match (config.gap, config.size) {
            (Some(gap), None) => Assigner::session(gap),
            (None, Some(size)) => Assigner::tumbling(size),
            _ => {
                return Err(Error::msg(
                    "window-count: give exactly one of `gap` and `size`",
                ));
            }
        };
        Ok((Count, WindowConfig::new(assigner)))
    }

    fn create(&self) -> i64 {
        0
    }

    fn add(&self, acc: i64, _: &Record<'_>) -> Result<i64, Error> {
        Ok(acc + 1)
    }

    fn merge(&self, a: i64, b: i64) -> Result<i64, Error> {
        Ok(a + b)
    }

    fn result(&self, key: &[u8], w: Window, acc: &i64) -> Result<Vec<u8>, Error> {
        Ok(format!(
            "{},{},{},{acc}",
            String::from_utf8_lossy(key),
            w.start,
            w.end
        )
        .into_bytes())
    }
}

weir_sdk::export!(Windowed<Count>);
