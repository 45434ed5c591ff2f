//! State is portable across languages: the host state one language's
//! operator wrote is handed, through the host's state backend, to the same
//! operator written in another language, which continues exactly where the
//! first stopped.
//!
//! The operator is the `stats` example (`plugins/stats` and its Python and
//! JavaScript twins): a record in value state (int, float, text and bytes
//! fields), a map state and a list state per user.

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

/// Runs `records` through a new instance of `plugin` over `state`, takes a
/// snapshot (so the guest hands all state to the host) and returns the
/// emitted values and the state.
fn run(
    plugin: &Plugin,
    state: Box<dyn KeyedStateBackend>,
    records: &[(String, String)],
) -> (Vec<String>, Box<dyn KeyedStateBackend>) {
    let mut instance = plugin
        .instantiate(InstanceConfig {
            uid: "stats".into(),
            config: String::new(),
            subtask: 0,
            parallelism: 1,
            max_parallelism: MAX_PARALLELISM,
            limits: Limits {
                memory_bytes: 256 << 20,
                fuel_per_call: 20_000_000_000,
                ..Limits::default()
            },
            state,
            operator_state: Vec::new(),
            attempt_number: 0,
            restored_types: Default::default(),
        })
        .unwrap();
    let mut batch = BatchWriter::default();
    for (user, value) in records {
        batch.push(Some(user.as_bytes()), value.as_bytes(), None);
    }
    instance.process(&batch.take().0).unwrap();
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
    instance.snapshot(1).unwrap();
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
