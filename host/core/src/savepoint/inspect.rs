//! Looking inside a savepoint (or checkpoint) without running a job:
//! what it holds ([`inspect`]), one state's entries as JSON lines
//! ([`dump`]), and whether a restore into a job would succeed ([`check`]).
//! Reading only; the CLI prints what these return.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use weir_format::snapshot::SourceSplit;

use crate::checkpoint::catalog::{Manifest, RestorePoint, human_bytes};
use crate::error::Error;
use crate::job::JobGraph;
use crate::plugin::{DeclaredKind, DeclaredState, TypeDescriptor};
use crate::savepoint::format::Redistribution;
use crate::savepoint::restore::OperatorSnapshot;
use crate::state::{StateEntries, StateKind, Value};

/// One state of an operator, as inspect shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateSummary {
    /// The state name.
    pub name: String,
    /// `value`, `map`, `list` or `operator-list`.
    pub kind: String,
    /// Its declared type, if known.
    pub type_name: Option<String>,
    /// Keys (keyed state) or items (operator list state).
    pub count: u64,
    /// Bytes of its sections, if the layout records them per state.
    pub bytes: Option<u64>,
    /// Operator list state: how it is redistributed.
    pub redistribution: Option<Redistribution>,
}

/// One vertex of a snapshot, as inspect shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorSummary {
    /// The uid.
    pub uid: String,
    /// Its parallelism then.
    pub parallelism: u32,
    /// Its states.
    pub states: Vec<StateSummary>,
    /// A source's splits and how far each was read, over all subtasks.
    pub source_splits: Option<Vec<SourceSplit>>,
    /// A sink's pre-committed parts, over all subtasks.
    pub pending_parts: Option<usize>,
    /// Bytes of its state files.
    pub bytes: u64,
}

/// What a snapshot holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    /// `savepoint 7` / `checkpoint 7`.
    pub what: String,
    /// `canonical` or `native` (checkpoint layout).
    pub layout: &'static str,
    /// Where it is.
    pub location: String,
    /// The job that took it.
    pub job_name: String,
    /// Its number of key groups.
    pub max_parallelism: u32,
    /// Every vertex.
    pub operators: Vec<OperatorSummary>,
}

impl std::fmt::Display for Inspection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} of job `{}` ({} layout), max_parallelism {}",
            self.what, self.job_name, self.layout, self.max_parallelism
        )?;
        writeln!(f, "  {}", self.location)?;
        for o in &self.operators {
            writeln!(
                f,
                "operator `{}`  parallelism {}  {}",
                o.uid,
                o.parallelism,
                human_bytes(o.bytes)
            )?;
            for s in &o.states {
                let mut line = format!("  state `{}`  {}", s.name, s.kind);
                if let Some(t) = &s.type_name {
                    let _ = write!(line, " {t}");
                }
                if let Some(r) = s.redistribution {
                    let _ = write!(line, " ({})", redistribution_name(r));
                }
                let unit = if s.kind == "operator-list" {
                    "items"
                } else {
                    "keys"
                };
                let _ = write!(line, "  {} {unit}", s.count);
                if let Some(b) = s.bytes {
                    let _ = write!(line, "  {}", human_bytes(b));
                }
                writeln!(f, "{line}")?;
            }
            if let Some(splits) = &o.source_splits {
                let shown: Vec<String> = splits
                    .iter()
                    .map(|s| {
                        let ended = if s.finished { " (ended)" } else { "" };
                        format!("{} at {}{ended}", s.split, s.position)
                    })
                    .collect();
                writeln!(f, "  source splits  {}", shown.join(", "))?;
            }
            if let Some(n) = o.pending_parts {
                writeln!(f, "  sink parts pre-committed  {n}")?;
            }
        }
        Ok(())
    }
}

fn redistribution_name(r: Redistribution) -> &'static str {
    match r {
        Redistribution::Split => "split",
        Redistribution::Union => "union",
    }
}

fn kind_name(k: StateKind) -> String {
    match k {
        StateKind::Value => "value",
        StateKind::Map => "map",
        StateKind::List => "list",
    }
    .to_owned()
}

/// The states a snapshot holds for `uid`: from a savepoint's metadata
/// (with declared types and bytes), or counted from a checkpoint's state
/// as read (`op`; without it, nothing is known).
fn state_summaries(m: &Manifest, uid: &str, op: Option<&OperatorSnapshot>) -> Vec<StateSummary> {
    let mut states = Vec::new();
    match m {
        Manifest::Savepoint(sp) => {
            for meta in sp.operators.iter().filter(|o| o.uid == uid) {
                for s in &meta.keyed_states {
                    states.push(StateSummary {
                        name: s.name.clone(),
                        kind: kind_name(s.kind.into()),
                        type_name: s.type_name.clone(),
                        count: s.keys,
                        bytes: Some(s.bytes),
                        redistribution: None,
                    });
                }
                for s in meta
                    .operator_states
                    .iter()
                    .filter(|s| s.namespace.is_user())
                {
                    states.push(StateSummary {
                        name: s.name.clone(),
                        kind: "operator-list".into(),
                        type_name: s.type_name.clone(),
                        count: s.items,
                        bytes: Some(s.bytes),
                        redistribution: Some(s.redistribution),
                    });
                }
            }
        }
        Manifest::Checkpoint(_) => {
            let Some(op) = op else { return states };
            let mut keyed: BTreeMap<&str, (StateKind, u64)> = BTreeMap::new();
            for s in op.keyed.values().flatten() {
                let e = keyed.entry(&s.name).or_insert((s.entries.kind(), 0));
                e.1 += s.entries.len() as u64;
            }
            for (name, (kind, count)) in keyed {
                states.push(StateSummary {
                    name: name.to_owned(),
                    kind: kind_name(kind),
                    type_name: None,
                    count,
                    bytes: None,
                    redistribution: None,
                });
            }
            let mut ops: BTreeMap<&str, (u64, Redistribution)> = BTreeMap::new();
            for l in op.lists.iter().flatten().filter(|l| l.namespace.is_user()) {
                let e = ops.entry(&l.name).or_insert((0, l.redistribution));
                e.0 += l.items.len() as u64;
            }
            for (name, (count, redistribution)) in ops {
                states.push(StateSummary {
                    name: name.to_owned(),
                    kind: "operator-list".into(),
                    type_name: None,
                    count,
                    bytes: None,
                    redistribution: Some(redistribution),
                });
            }
        }
    }
    states
}

/// Reads every state file of `point` (so a damaged one is an error naming
/// it) and summarises what it holds.
///
/// # Errors
/// [`Error::Storage`] or [`Error::Format`] for a missing or corrupt file.
pub async fn inspect(point: &RestorePoint) -> Result<Inspection, Error> {
    let operators = point.read_all().await?;
    let m = &point.manifest;
    let mut out = Vec::new();
    for op in operators {
        let states = state_summaries(m, &op.uid, Some(&op));
        let mut source_splits: Option<Vec<SourceSplit>> = None;
        for lists in &op.lists {
            let stored = SourceSplit::in_lists(lists).map_err(|e| Error::Savepoint {
                message: format!(
                    "operator `{}` in {}: a stored source split is malformed: {e}",
                    op.uid,
                    m.describe()
                ),
            })?;
            if let Some(splits) = stored {
                source_splits.get_or_insert_default().extend(splits);
            }
        }
        out.push(OperatorSummary {
            bytes: vertex_bytes(m, &op.uid),
            uid: op.uid,
            parallelism: op.parallelism,
            states,
            source_splits,
            pending_parts: op
                .sinks
                .map(|s| s.iter().flatten().map(|s| s.pending.len()).sum()),
        });
    }
    Ok(Inspection {
        what: m.describe(),
        layout: match m {
            Manifest::Savepoint(_) => "canonical",
            Manifest::Checkpoint(_) => "native",
        },
        location: point.location(),
        job_name: m.job_name().to_owned(),
        max_parallelism: m.max_parallelism(),
        operators: out,
    })
}

fn vertex_bytes(m: &Manifest, uid: &str) -> u64 {
    match m {
        Manifest::Checkpoint(c) => c
            .vertices
            .iter()
            .filter(|v| v.uid == uid)
            .map(|v| v.bytes())
            .sum(),
        Manifest::Savepoint(s) => s
            .operators
            .iter()
            .filter(|o| o.uid == uid)
            .map(|o| {
                o.keyed_states.iter().map(|s| s.bytes).sum::<u64>()
                    + o.operator_states.iter().map(|s| s.bytes).sum::<u64>()
            })
            .sum(),
    }
}

/// A state value as JSON: numbers, strings, booleans, `null`, arrays;
/// records become objects; maps become objects when every key is text,
/// else arrays of `[key, value]` pairs; bytes become `{"bytes": HEX}`.
pub fn value_to_json(v: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::Boolean(b) => J::Bool(*b),
        Value::Int(i) => J::from(*i),
        Value::Uint(u) => J::from(*u),
        Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        Value::Text(s) => J::String(s.clone()),
        Value::Bytes(b) => serde_json::json!({ "bytes": hex::encode(b) }),
        Value::None => J::Null,
        Value::List(items) => J::Array(items.iter().map(value_to_json).collect()),
        Value::Record(fields) => J::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), value_to_json(v)))
                .collect(),
        ),
        Value::Map(entries) => {
            if entries.iter().all(|(k, _)| matches!(k, Value::Text(_))) {
                J::Object(
                    entries
                        .iter()
                        .map(|(k, v)| {
                            let Value::Text(k) = k else {
                                unreachable!("checked above")
                            };
                            (k.clone(), value_to_json(v))
                        })
                        .collect(),
                )
            } else {
                J::Array(
                    entries
                        .iter()
                        .map(|(k, v)| J::Array(vec![value_to_json(k), value_to_json(v)]))
                        .collect(),
                )
            }
        }
    }
}

/// A record key as JSON: a string if it is UTF-8, else `{"bytes": HEX}`.
fn key_to_json(key: &[u8]) -> serde_json::Value {
    match std::str::from_utf8(key) {
        Ok(s) => serde_json::Value::String(s.to_owned()),
        Err(_) => serde_json::json!({ "bytes": hex::encode(key) }),
    }
}

/// Every entry of state `state` of operator `uid`, one JSON object per
/// line: `{"key_group", "key", "value"}` (value state), `{"key_group",
/// "key", "map_key", "value"}` (map state, one line per map entry),
/// `{"key_group", "key", "values"}` (list state), `{"subtask", "value"}`
/// (operator list state, one line per item). Keys in key-group order.
///
/// # Errors
/// [`Error::Savepoint`] naming the uid or state if there is no such one
/// (listing what there is); storage and format errors as [`inspect`].
pub async fn dump(point: &RestorePoint, uid: &str, state: &str) -> Result<Vec<String>, Error> {
    let ops = point.read_all().await?;
    let Some(op) = ops.iter().find(|o| o.uid == uid) else {
        let uids: Vec<&str> = ops.iter().map(|o| o.uid.as_str()).collect();
        return Err(Error::Savepoint {
            message: format!(
                "{} has no operator `{uid}`; it has: {}",
                point.manifest.describe(),
                uids.join(", ")
            ),
        });
    };
    let mut lines = Vec::new();
    let mut found = false;
    for (key_group, states) in &op.keyed {
        for s in states.iter().filter(|s| s.name == state) {
            found = true;
            let line = |mut o: serde_json::Map<String, serde_json::Value>, key: &[u8]| {
                let mut m = serde_json::Map::new();
                m.insert("key_group".into(), (*key_group).into());
                m.insert("key".into(), key_to_json(key));
                m.append(&mut o);
                serde_json::Value::Object(m).to_string()
            };
            match &s.entries {
                StateEntries::Value(entries) => {
                    for (key, v) in entries {
                        let mut o = serde_json::Map::new();
                        o.insert("value".into(), value_to_json(v));
                        lines.push(line(o, key));
                    }
                }
                StateEntries::Map(entries) => {
                    for (key, map) in entries {
                        for (k, v) in map {
                            let mut o = serde_json::Map::new();
                            o.insert("map_key".into(), value_to_json(k));
                            o.insert("value".into(), value_to_json(v));
                            lines.push(line(o, key));
                        }
                    }
                }
                StateEntries::List(entries) => {
                    for (key, items) in entries {
                        let mut o = serde_json::Map::new();
                        o.insert(
                            "values".into(),
                            serde_json::Value::Array(items.iter().map(value_to_json).collect()),
                        );
                        lines.push(line(o, key));
                    }
                }
            }
        }
    }
    for (subtask, lists) in op.lists.iter().enumerate() {
        for list in lists
            .iter()
            .filter(|l| l.namespace.is_user() && l.name == state)
        {
            found = true;
            for v in &list.items {
                lines.push(
                    serde_json::json!({ "subtask": subtask, "value": value_to_json(v) })
                        .to_string(),
                );
            }
        }
    }
    if !found && !state_listed(&point.manifest, uid, state) {
        let mut names: Vec<String> = op
            .keyed
            .values()
            .flatten()
            .map(|s| s.name.clone())
            .chain(
                op.lists
                    .iter()
                    .flatten()
                    .filter(|l| l.namespace.is_user())
                    .map(|l| l.name.clone()),
            )
            .collect();
        names.sort();
        names.dedup();
        return Err(Error::Savepoint {
            message: format!(
                "operator `{uid}` has no state `{state}` in {}; it has: {}",
                point.manifest.describe(),
                if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                }
            ),
        });
    }
    Ok(lines)
}

/// Whether a savepoint's metadata lists the state (declared, maybe empty).
fn state_listed(m: &Manifest, uid: &str, state: &str) -> bool {
    match m {
        Manifest::Savepoint(sp) => sp.operators.iter().any(|o| {
            o.uid == uid
                && (o.keyed_states.iter().any(|s| s.name == state)
                    || o.operator_states
                        .iter()
                        .any(|s| s.namespace.is_user() && s.name == state))
        }),
        Manifest::Checkpoint(_) => false,
    }
}

/// One finding of [`check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Whether it makes the restore fail.
    pub fatal: bool,
    /// What, naming the uid and state.
    pub message: String,
}

/// Whether a restore of a snapshot into a job would succeed, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// One line per uid: matched (with parallelism), new, dropped.
    pub uids: Vec<String>,
    /// Problems and notes, by uid and state.
    pub findings: Vec<Finding>,
}

impl CheckReport {
    /// Whether `weir run -s` would succeed.
    pub fn ok(&self) -> bool {
        self.findings.iter().all(|f| !f.fatal)
    }
}

impl std::fmt::Display for CheckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for u in &self.uids {
            writeln!(f, "{u}")?;
        }
        for finding in &self.findings {
            let tag = if finding.fatal { "error" } else { "note" };
            writeln!(f, "{tag}: {}", finding.message)?;
        }
        if self.ok() {
            writeln!(f, "restore would succeed")
        } else {
            writeln!(f, "restore would FAIL")
        }
    }
}

fn declared_kind_name(k: DeclaredKind) -> String {
    match k.keyed() {
        Some(k) => kind_name(k),
        None => "operator-list".into(),
    }
}

/// The states each operator of `graph` declares, by uid: its plugin
/// loaded and asked, as a restore would. What [`check`] compares a
/// snapshot against.
///
/// # Errors
/// A plugin that does not load, or fails or traps declaring its states.
pub fn declared_states(
    engine: &crate::plugin::PluginEngine,
    graph: &JobGraph,
) -> Result<BTreeMap<String, Vec<DeclaredState>>, Error> {
    let mut declared = BTreeMap::new();
    for v in &graph.vertices {
        if let crate::job::VertexKind::Operator {
            plugin,
            config,
            limits,
        } = &v.kind
        {
            let states = engine.load(&v.uid, plugin)?.declared_states(
                &v.uid,
                config,
                v.parallelism,
                graph.max_parallelism,
                *limits,
            )?;
            declared.insert(v.uid.clone(), states);
        }
    }
    Ok(declared)
}

/// Checks a restore of `point` into `graph` without running it: the uid
/// plan (with `allow_non_restored`), then for every matched operator the
/// states its plugin declares (`declared`, by uid; `None` for vertices
/// without a plugin) against what the snapshot holds — kinds must match,
/// declared types must read the stored ones.
///
/// Every state file the restore would read is read and verified, and the
/// sinks' pending parts are looked for, as `weir run -s` does: what would
/// make the run fail is a fatal finding naming the file.
///
/// # Errors
/// Storage and format errors reading a checkpoint's state files a second
/// time (after they verified once).
pub async fn check(
    point: &RestorePoint,
    graph: &JobGraph,
    declared: &BTreeMap<String, Vec<DeclaredState>>,
    allow_non_restored: bool,
) -> Result<CheckReport, Error> {
    let mut report = CheckReport {
        uids: Vec::new(),
        findings: Vec::new(),
    };
    let plan = match point.plan(graph, true) {
        Ok(p) => p,
        Err(e) => {
            report.findings.push(Finding {
                fatal: true,
                message: e.to_string(),
            });
            return Ok(report);
        }
    };
    for (uid, from, to) in &plan.matched {
        let scale = if from == to {
            format!("parallelism {to}")
        } else {
            format!("parallelism {from} → {to} (key groups redistributed)")
        };
        report.uids.push(format!("matched  `{uid}`  {scale}"));
    }
    for uid in &plan.new {
        report
            .uids
            .push(format!("new      `{uid}`  starts with empty state"));
    }
    for uid in &plan.dropped {
        report.uids.push(format!(
            "dropped  `{uid}`  has state but no operator in the job"
        ));
    }
    if !plan.dropped.is_empty() {
        report.findings.push(Finding {
            fatal: !allow_non_restored,
            message: format!(
                "state of {} would be dropped{}",
                plan.dropped.join(", "),
                if allow_non_restored {
                    " (--allow-non-restored-state)"
                } else {
                    ": restore needs --allow-non-restored-state (-n)"
                }
            ),
        });
    }
    // Read and verify exactly what `weir run -s` would, so the two agree
    // on a missing, damaged or non-regular file and on missing parts.
    let loaded = point.load(graph, true).await;
    if let Err(e) = &loaded {
        report.findings.push(Finding {
            fatal: true,
            message: e.to_string(),
        });
    }
    let ops = match (&point.manifest, loaded) {
        (Manifest::Checkpoint(_), Ok(_)) => {
            let uids: Vec<&str> = plan.matched.iter().map(|(u, ..)| u.as_str()).collect();
            point.read(&uids).await?
        }
        _ => Vec::new(),
    };
    for (uid, ..) in &plan.matched {
        let Some(decl) = declared.get(uid) else {
            continue;
        };
        let stored: Vec<(String, String, Option<String>)> =
            state_summaries(&point.manifest, uid, ops.iter().find(|o| o.uid == *uid))
                .into_iter()
                // Timers are the host's states: no plugin declares them.
                .filter(|s| !crate::timers::is_reserved(&s.name))
                .map(|s| (s.name, s.kind, s.type_name))
                .collect();
        if decl.is_empty() {
            if !stored.is_empty() {
                report.findings.push(Finding {
                    fatal: false,
                    message: format!(
                        "`{uid}`: the plugin declares no states, so its use of {} cannot be checked",
                        stored
                            .iter()
                            .map(|(n, k, _)| format!("`{n}` ({k})"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
            }
            continue;
        }
        for (name, kind, type_name) in &stored {
            let Some(d) = decl.iter().find(|d| &d.name == name) else {
                report.findings.push(Finding {
                    fatal: false,
                    message: format!(
                        "`{uid}`: state `{name}` ({kind}) is in the snapshot but not declared by the plugin: it is restored, and unused"
                    ),
                });
                continue;
            };
            let declared_kind = declared_kind_name(d.kind);
            if &declared_kind != kind {
                report.findings.push(Finding {
                    fatal: true,
                    message: format!(
                        "`{uid}`: state `{name}` is {kind} in the snapshot, the plugin declares {declared_kind}"
                    ),
                });
                continue;
            }
            if let (Some(new), Some(old)) = (d.type_descriptor(), type_name) {
                match TypeDescriptor::parse(old) {
                    Ok(old) => {
                        if let Err(why) = new.reads(&old) {
                            report.findings.push(Finding {
                                fatal: true,
                                message: format!(
                                    "`{uid}`: state `{name}`: the plugin's type {new} cannot read the stored {old}: {why}"
                                ),
                            });
                        } else if new != old {
                            report.findings.push(Finding {
                                fatal: false,
                                message: format!(
                                    "`{uid}`: state `{name}`: type {old} evolves to {new} (compatible)"
                                ),
                            });
                        }
                    }
                    Err(e) => report.findings.push(Finding {
                        fatal: false,
                        message: format!(
                            "`{uid}`: state `{name}`: the stored type cannot be parsed ({e}), not checked"
                        ),
                    }),
                }
            }
        }
        for d in decl {
            if stored.iter().all(|(n, ..)| *n != d.name) {
                report.findings.push(Finding {
                    fatal: false,
                    message: format!(
                        "`{uid}`: state `{}` ({}) is new: it starts empty",
                        d.name,
                        declared_kind_name(d.kind)
                    ),
                });
            }
        }
    }
    Ok(report)
}
