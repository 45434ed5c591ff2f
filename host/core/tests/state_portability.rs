//! State is portable across languages: the host state one language's
//! operator wrote is handed, through the host's state backend, to the same
//! operator written in another language, which continues exactly where the
//! first stopped.
//!
//! The operator is the `stats` example (`plugins/stats` and its Python and
//! JavaScript twins): a record in value state (int, float, text and bytes
//! fields), a map state and a list state per user.

use futures::executor::block_on;
use std::path::PathBuf;

use weir_format::{BatchReader, BatchWriter};
use weir_host::job::Limits;
use weir_host::keygroup::{KeyGroupRange, key_group_of};
use weir_host::plugin::{InstanceConfig, Plugin, PluginEngine};
use weir_host::state::{KeyedStateBackend, MemoryStateBackend, Value};
use weir_test_plugins as plugins;

const MAX_PARALLELISM: u32 = 128;

/// The same operator in every language.
fn languages() -> Vec<(&'static str, &'static str)> {
    vec![
        ("rust", plugins::STATS),
        ("python", plugins::PY_STATS),
        ("javascript", plugins::JS_STATS),
    ]
}

const USERS: &[&str] = &["ann", "bob", "cy"];

/// `(user, "ITEM AMOUNT")` records; amounts are multiples of 0.5 so every
/// language prints the same one-decimal total.
fn input() -> Vec<(String, String)> {
    let items = ["apple", "fig", "kiwi", "pear", "plum"];
    (0..60)
        .map(|i| {
            let user = USERS[(i * 7 + i / 5) % USERS.len()];
            let item = items[(i * 3 + i / 4) % items.len()];
            let amount = f64::from(u32::try_from(i % 9).unwrap()) * 0.5;
            (user.to_owned(), format!("{item} {amount}"))
        })
        .collect()
}

fn engine() -> PluginEngine {
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("plugin-cache");
    PluginEngine::new(Some(cache)).unwrap()
}

fn load(engine: &PluginEngine, path: &str) -> Plugin {
    engine.load("stats", std::path::Path::new(path)).unwrap()
}

fn fresh_state() -> Box<dyn KeyedStateBackend> {
    Box::new(MemoryStateBackend::new(KeyGroupRange::for_subtask(
        0,
        1,
        MAX_PARALLELISM,
    )))
}

/// Operator `uid`'s only subtask, under `limits`, over `state`.
fn subtask_zero(uid: &str, limits: Limits, state: Box<dyn KeyedStateBackend>) -> InstanceConfig {
    InstanceConfig {
        uid: uid.into(),
        config: String::new(),
        subtask: 0,
        parallelism: 1,
        max_parallelism: MAX_PARALLELISM,
        limits,
        state,
        operator_state: Vec::new(),
        attempt_number: 0,
        restored_types: Default::default(),
        timers: weir_host::timers::TimerService::new(MAX_PARALLELISM),
    }
}

/// Runs `records` through a new instance of `plugin` over `state`, takes a
/// snapshot (so the guest hands all state to the host) and returns the
/// emitted values and the state.
fn run(
    plugin: &Plugin,
    state: Box<dyn KeyedStateBackend>,
    records: &[(String, String)],
) -> (Vec<String>, Box<dyn KeyedStateBackend>) {
    let limits = Limits {
        memory_bytes: 256 << 20,
        fuel_per_call: 20_000_000_000,
        ..Limits::default()
    };
    let mut instance = block_on(plugin.instantiate(subtask_zero("stats", limits, state))).unwrap();
    let mut batch = BatchWriter::default();
    for (user, value) in records {
        batch.push(Some(user.as_bytes()), value.as_bytes(), None);
    }
    block_on(instance.process(&batch.take().0)).unwrap();
    let out = BatchReader::new(instance.output())
        .map(|r| {
            let r = r.unwrap();
            format!(
                "{} {}",
                String::from_utf8_lossy(r.key.unwrap()),
                String::from_utf8_lossy(r.value)
            )
        })
        .collect();
    instance.output().clear();
    block_on(instance.snapshot(1)).unwrap();
    (out, instance.into_state())
}

/// One user's `stats` value, `items` entries and `recent` list.
type UserState = (String, Option<Value>, Vec<(Value, Value)>, Vec<Value>);

/// Every state entry of every user, map entries in a canonical order.
fn dump(state: &dyn KeyedStateBackend) -> Vec<UserState> {
    USERS
        .iter()
        .map(|user| {
            let key = user.as_bytes();
            let kg = key_group_of(key, MAX_PARALLELISM);
            let mut items = state.map_entries(kg, "items", key).unwrap();
            items.sort_by_key(|(k, _)| k.canonical_bytes());
            (
                (*user).to_owned(),
                state.value_get(kg, "stats", key).unwrap(),
                items,
                state.list_get(kg, "recent", key).unwrap(),
            )
        })
        .collect()
}

#[test]
fn stats_state_written_in_one_language_continues_in_every_other() {
    let engine = engine();
    let records = input();
    let (first, second) = records.split_at(25);

    // The reference: the Rust operator over all the input in one go.
    let rust = load(&engine, plugins::STATS);
    let (expected, _) = run(&rust, fresh_state(), &records);
    assert_eq!(expected.len(), records.len());
    let (last_user, _) = &records[records.len() - 1];
    let n = records.iter().filter(|(u, _)| u == last_user).count();
    let last = &expected[records.len() - 1];
    assert!(
        last.starts_with(&format!("{last_user} count={n} ")),
        "{last}"
    );

    let mut states_after_first = Vec::new();
    for (writer, writer_path) in languages() {
        let writer_plugin = load(&engine, writer_path);
        let (out, state) = run(&writer_plugin, fresh_state(), first);
        assert_eq!(out, expected[..first.len()], "{writer} on the first part");
        states_after_first.push((writer, dump(state.as_ref())));

        for (reader, reader_path) in languages() {
            let (_, state) = run(&writer_plugin, fresh_state(), first);
            let reader_plugin = load(&engine, reader_path);
            let (out, _) = run(&reader_plugin, state, second);
            assert_eq!(
                out,
                expected[first.len()..],
                "{reader} continuing from the state {writer} wrote"
            );
        }
    }

    // Not only readable: every language wrote the very same typed values.
    let (first_lang, reference) = &states_after_first[0];
    let Some(Value::Record(fields)) = &reference[0].1 else {
        panic!("stats is a record: {:?}", reference[0].1)
    };
    let names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["count", "total", "last", "raw"]);
    for (lang, state) in &states_after_first[1..] {
        assert_eq!(
            state, reference,
            "{lang} and {first_lang} wrote different state"
        );
    }
}

/// The word count in every language.
fn word_counts() -> Vec<(&'static str, &'static str)> {
    vec![
        ("rust", plugins::WORD_COUNT),
        ("python", plugins::PY_WORD_COUNT),
        ("javascript", plugins::JS_WORD_COUNT),
    ]
}

/// A restored word count's state: `count` = `i + 1` for words `w0..wN`.
fn restored_counts(keys: usize) -> Box<dyn KeyedStateBackend> {
    let mut state = fresh_state();
    for i in 0..keys {
        let key = format!("w{i}");
        let kg = key_group_of(key.as_bytes(), MAX_PARALLELISM);
        state
            .apply(
                kg,
                "count",
                key.as_bytes(),
                weir_host::state::Update::ValueSet(Value::Int(i as i64 + 1)),
            )
            .unwrap();
    }
    state
}

/// Runs `plugin` over a restored state of `keys` words, feeding it the
/// words `touched` (in batches of 1,024 records, as the host's sources
/// do), then takes a snapshot; every call gets `fuel`. The error, if any.
fn count_then_snapshot(
    plugin: &Plugin,
    keys: usize,
    touched: impl Iterator<Item = usize> + Clone,
    fuel: u64,
) -> Result<Box<dyn KeyedStateBackend>, String> {
    let limits = Limits {
        memory_bytes: 256 << 20,
        fuel_per_call: fuel,
        fuel_per_snapshot: fuel,
        ..Limits::DEFAULT
    };
    let mut instance =
        block_on(plugin.instantiate(subtask_zero("count", limits, restored_counts(keys))))
            .map_err(|e| e.to_string())?;
    let words: Vec<String> = touched.map(|i| format!("w{i}")).collect();
    for chunk in words.chunks(1024) {
        let mut batch = BatchWriter::default();
        for w in chunk {
            batch.push(Some(w.as_bytes()), w.as_bytes(), None);
        }
        block_on(instance.process(&batch.take().0)).map_err(|e| e.to_string())?;
        instance.output().clear();
    }
    block_on(instance.snapshot(1)).map_err(|e| e.to_string())?;
    Ok(instance.into_state())
}

/// Measures, per language, the smallest `fuel_per_call` with which a
/// word count restored with 100,000 keys counts every key once and
/// snapshots: the cost of flushing 100,000 changed keys (plus one batch).
/// Run with `cargo test -p weir-host --release --test state_portability
/// -- --ignored --nocapture flush_fuel`.
#[test]
#[ignore = "a measurement: prints fuel per flushed key"]
fn flush_fuel_at_100k_keys() {
    const KEYS: usize = 100_000;
    let engine = engine();
    for (language, path) in word_counts() {
        let plugin = load(&engine, path);
        for (what, touched) in [("none", 0..0), ("all", 0..KEYS)] {
            let (mut lo, mut hi) = (1_000_000u64, 400_000_000_000u64);
            while hi - lo > hi / 50 {
                let mid = lo + (hi - lo) / 2;
                match count_then_snapshot(&plugin, KEYS, touched.clone(), mid) {
                    Ok(_) => hi = mid,
                    Err(e) if e.contains("CPU budget") => lo = mid,
                    Err(e) => panic!("{language}: {e}"),
                }
            }
            let failing = count_then_snapshot(&plugin, KEYS, touched.clone(), lo)
                .err()
                .unwrap_or_default();
            let hook = failing
                .split("failed in `")
                .nth(1)
                .and_then(|s| s.split('`').next())
                .unwrap_or("?");
            println!(
                "{language:<10} touched {what:<4}: needs {:>6.3}e9 fuel per call ({:.0} per key), bound by `{hook}`",
                hi as f64 / 1e9,
                hi as f64 / KEYS as f64
            );
        }
    }
}
