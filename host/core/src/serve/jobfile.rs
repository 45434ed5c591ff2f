//! A job file a tenant submits, confined to the tenant: plugins named by
//! the hash of an upload of the tenant's, `file` sources and sinks inside
//! the tenant's file directory, checkpoints and savepoints only where the
//! host puts them, limits within the tenant's quota. Pure: the plugin
//! lookup is the caller's.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use crate::error::Problem;
use crate::job::{self, JobFile, JobGraph, LimitsSpec, SinkType, SourceType, VertexKind};

use super::config::Quota;

/// What a plugin reference in a job file looks like: `sha256:` and the
/// upload's 64 hex digits.
pub const PLUGIN_PREFIX: &str = "sha256:";

/// A submitted job, parsed and confined.
#[derive(Debug)]
pub struct Confined {
    /// The graph to run.
    pub graph: JobGraph,
    /// Its subtasks, all vertices together.
    pub subtasks: u32,
    /// Its plugin instances: the subtasks of its Wasm operators.
    pub instances: u32,
}

/// The plugin hashes (64 hex digits) a job file names, in order, or the
/// problems with its plugin fields. Refuses anything but `sha256:<hex>`.
///
/// # Errors
/// The job file does not parse, or a plugin field is not a hash.
pub fn plugin_refs(text: &str) -> Result<Vec<String>, Vec<Problem>> {
    let file = parse(text)?;
    let mut refs = Vec::new();
    let mut problems = Vec::new();
    for (i, op) in file.operators.iter().enumerate() {
        match plugin_hash(&op.plugin.to_string_lossy()) {
            Some(h) => refs.push(h),
            None => problems.push(problem(
                format!("operators[{i}].plugin"),
                format!(
                    "`{}` is not an uploaded plugin: name one as `{PLUGIN_PREFIX}<64 hex digits>` \
                     (`weir submit` uploads the files a job names and rewrites them so)",
                    op.plugin.display()
                ),
            )),
        }
    }
    if problems.is_empty() {
        Ok(refs)
    } else {
        Err(problems)
    }
}

/// The hash in a `sha256:<hex>` reference.
pub fn plugin_hash(reference: &str) -> Option<String> {
    let hex = reference.strip_prefix(PLUGIN_PREFIX)?;
    (hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .then(|| hex.to_owned())
}

/// Parses and confines job file `text` for a tenant with `quota`, whose
/// plugins are at `plugins` (hash → local file) and whose `file` sources
/// and sinks live under `files`.
///
/// # Errors
/// Every problem found, each naming its field.
pub fn confine(
    text: &str,
    quota: &Quota,
    plugins: &HashMap<String, PathBuf>,
    files: &Path,
) -> Result<Confined, Vec<Problem>> {
    let mut file = parse(text)?;
    let mut problems = Vec::new();
    if file
        .checkpoints
        .as_ref()
        .is_some_and(|c| c.storage.is_some())
    {
        problems.push(problem(
            "checkpoints.storage",
            "is set by the host: a hosted job's checkpoints live in its tenant's namespace",
        ));
    }
    if file.savepoints.as_ref().is_some_and(|s| s.dir.is_some()) {
        problems.push(problem(
            "savepoints.dir",
            "is set by the host: savepoints are named inside the tenant's namespace",
        ));
    }
    for (i, op) in file.operators.iter_mut().enumerate() {
        let field = format!("operators[{i}].plugin");
        match plugin_hash(&op.plugin.to_string_lossy()).and_then(|h| plugins.get(&h)) {
            Some(path) => op.plugin = path.clone(),
            None => problems.push(problem(
                field,
                format!(
                    "`{}` is not a plugin this tenant uploaded (POST /v1/plugins, or `weir submit`)",
                    op.plugin.display()
                ),
            )),
        }
    }
    for (i, s) in file.sources.iter_mut().enumerate() {
        if matches!(s.kind, SourceType::Nats | SourceType::Kafka) {
            problems.push(problem(format!("sources[{i}].type"), BROKERS_REFUSED));
        }
        if s.kind == SourceType::File
            && let Some(p) = &mut s.path
        {
            match confined_path(p) {
                Ok(rel) => *p = files.join(rel),
                Err(why) => problems.push(problem(format!("sources[{i}].path"), why)),
            }
        }
    }
    for (i, s) in file.sinks.iter_mut().enumerate() {
        match s.kind {
            SinkType::Stdout => problems.push(problem(
                format!("sinks[{i}].type"),
                "`stdout` is the host's own output: use a `file` or `blackhole` sink",
            )),
            SinkType::File => {
                if let Some(p) = &mut s.path {
                    match confined_path(p) {
                        Ok(rel) => *p = files.join(rel),
                        Err(why) => problems.push(problem(format!("sinks[{i}].path"), why)),
                    }
                }
            }
            SinkType::Blackhole => {}
            SinkType::Nats | SinkType::Kafka => {
                problems.push(problem(format!("sinks[{i}].type"), BROKERS_REFUSED));
            }
        }
    }
    let job_limits = file.limits.get_or_insert_with(LimitsSpec::default);
    within_quota(job_limits, quota, "limits", true, &mut problems);
    for (i, op) in file.operators.iter_mut().enumerate() {
        if let Some(l) = &mut op.limits {
            within_quota(
                l,
                quota,
                &format!("operators[{i}].limits"),
                false,
                &mut problems,
            );
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let graph = job::build_graph(file, files)?;
    let subtasks = graph.vertices.iter().map(|v| v.parallelism).sum();
    let instances = graph
        .vertices
        .iter()
        .filter(|v| matches!(v.kind, VertexKind::Operator { .. }))
        .map(|v| v.parallelism)
        .sum();
    debug_assert!(graph.vertices.iter().all(|v| match &v.kind {
        VertexKind::FileSource { path } => path.starts_with(files),
        VertexKind::FileSink { dir } => dir.starts_with(files),
        _ => true,
    }));
    Ok(Confined {
        graph,
        subtasks,
        instances,
    })
}

/// Why a tenant's job may not name a broker: the host would connect to
/// any address a tenant wrote, from inside its own network.
const BROKERS_REFUSED: &str = "broker connectors are not offered to tenants: a job would make the host connect to any address it names; run broker jobs with `weir run`";

fn parse(text: &str) -> Result<JobFile, Vec<Problem>> {
    if text.len() as u64 > job::MAX_JOB_FILE_BYTES {
        return Err(vec![problem(
            "job",
            format!(
                "is {} bytes, over the {}-byte limit",
                text.len(),
                job::MAX_JOB_FILE_BYTES
            ),
        )]);
    }
    toml::from_str(text).map_err(|e| vec![problem("job", e.to_string().trim_end())])
}

fn problem(field: impl Into<String>, message: impl Into<String>) -> Problem {
    Problem {
        field: field.into(),
        message: message.into(),
    }
}

/// `path` if it is relative and stays inside the directory it is joined
/// to: no root, no `..`, no `.`-only path.
fn confined_path(path: &Path) -> Result<PathBuf, String> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(format!(
                    "`{}` has a `..`: paths are relative to the tenant's file directory and stay in it",
                    path.display()
                ));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!(
                    "`{}` is absolute: paths are relative to the tenant's file directory",
                    path.display()
                ));
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err("names no file inside the tenant's file directory".into());
    }
    Ok(out)
}

/// Refuses limits over the quota; at the job level, sets absent ones to
/// the quota (operators inherit them).
fn within_quota(
    l: &mut LimitsSpec,
    quota: &Quota,
    field: &str,
    fill: bool,
    problems: &mut Vec<Problem>,
) {
    let mut check = |name: &str, value: &mut Option<u64>, most: u64, quota_name: &str| match *value
    {
        Some(v) if v > most => problems.push(problem(
            format!("{field}.{name}"),
            format!("{v} is over the tenant's quota `{quota_name}` of {most}"),
        )),
        Some(_) => {}
        None if fill => *value = Some(most),
        None => {}
    };
    check(
        "memory_mb",
        &mut l.memory_mb,
        quota.instance_memory_mb,
        "instance_memory_mb",
    );
    check("state_mb", &mut l.state_mb, quota.state_mb, "state_mb");
    check(
        "emit_mb_per_call",
        &mut l.emit_mb_per_call,
        quota.emit_mb_per_call,
        "emit_mb_per_call",
    );
    check(
        "fuel_per_call",
        &mut l.fuel_per_call,
        quota.fuel_per_call,
        "fuel_per_call",
    );
    check(
        "job_memory_mb",
        &mut l.job_memory_mb,
        quota.memory_mb,
        "memory_mb",
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn plugins(dir: &Path) -> HashMap<String, PathBuf> {
        let path = dir.join("p.wasm");
        std::fs::write(&path, b"\0asm").unwrap();
        HashMap::from([(HASH.to_owned(), path)])
    }

    fn job(extra: &str) -> String {
        format!(
            "name = \"wc\"\n[[sources]]\nuid = \"in\"\ntype = \"file\"\npath = \"input/words.txt\"\n\
             [[operators]]\nuid = \"count\"\nplugin = \"sha256:{HASH}\"\ninput = \"in\"\n\
             [[sinks]]\nuid = \"out\"\ntype = \"file\"\npath = \"out\"\ninput = \"count\"\n{extra}"
        )
    }

    fn fields(problems: &[Problem]) -> Vec<&str> {
        problems.iter().map(|p| p.field.as_str()).collect()
    }

    #[test]
    fn a_job_is_confined_to_the_tenant() {
        let dir = tempfile::tempdir().unwrap();
        let files = dir.path().join("files");
        std::fs::create_dir_all(files.join("input")).unwrap();
        std::fs::write(files.join("input/words.txt"), "a b").unwrap();
        let c = confine(&job(""), &Quota::DEFAULT, &plugins(dir.path()), &files).unwrap();
        assert_eq!(c.subtasks, 3);
        let kinds: Vec<String> = c
            .graph
            .vertices
            .iter()
            .map(|v| format!("{:?}", v.kind))
            .collect();
        assert_eq!(
            kinds[0],
            format!("FileSource({})", files.join("input/words.txt").display())
        );
        assert_eq!(
            kinds[2],
            format!("FileSink({})", files.join("out").display())
        );
        match &c.graph.vertices[1].kind {
            VertexKind::Operator { limits, .. } => {
                assert_eq!(limits.memory_bytes, Quota::DEFAULT.instance_memory_mb << 20);
                assert_eq!(limits.state_bytes, Quota::DEFAULT.state_mb << 20);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn paths_plugins_and_storage_outside_the_tenant_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let text = job("[checkpoints]\ninterval = \"1s\"\nstorage = \"/tmp/x\"\n[savepoints]\ndir = \"s3://b/p\"\n")
            .replace("input/words.txt", "../../etc/passwd")
            .replace("path = \"out\"", "path = \"/var/lib/weir\"");
        let err = confine(&text, &Quota::DEFAULT, &HashMap::new(), dir.path()).unwrap_err();
        assert_eq!(
            fields(&err),
            [
                "checkpoints.storage",
                "savepoints.dir",
                "operators[0].plugin",
                "sources[0].path",
                "sinks[0].path"
            ],
            "{err:?}"
        );
        let stdout = job("").replace("type = \"file\"\npath = \"out\"", "type = \"stdout\"");
        let err = confine(&stdout, &Quota::DEFAULT, &plugins(dir.path()), dir.path()).unwrap_err();
        assert_eq!(fields(&err), ["sinks[0].type"]);
        let by_path = job("").replace(&format!("sha256:{HASH}"), "/tmp/evil.wasm");
        assert_eq!(
            fields(&plugin_refs(&by_path).unwrap_err()),
            ["operators[0].plugin"]
        );
        assert_eq!(plugin_refs(&job("")).unwrap(), [HASH]);
    }

    #[test]
    fn limits_over_the_quota_are_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let text = job("[limits]\nmemory_mb = 4096\n").replace(
            "input = \"in\"\n",
            "input = \"in\"\nlimits = { state_mb = 100000 }\n",
        );
        let err = confine(&text, &Quota::DEFAULT, &plugins(dir.path()), dir.path()).unwrap_err();
        assert_eq!(
            fields(&err),
            ["limits.memory_mb", "operators[0].limits.state_mb"]
        );
        assert!(err[0].message.contains("`instance_memory_mb`"), "{err:?}");
    }
}
