//! The host config of `weir serve` (`HOST.toml`, `docs/serve.md`): where
//! the host listens and stores, its tenants, their token hashes and
//! quotas. Read at start and again on `SIGHUP`; a config that does not
//! validate is refused whole, naming every field at fault, and a reload
//! that fails keeps the config in force.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::Error;

/// The largest host config read.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// The most tenants one host serves.
pub const MAX_TENANTS: usize = 10_000;
/// The most tokens one tenant has.
pub const MAX_TOKENS: usize = 64;
/// The longest tenant name, bytes.
pub const MAX_TENANT_NAME: usize = 64;
/// The default REST address.
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:8090";
/// The default largest plugin upload, MiB.
pub const DEFAULT_MAX_PLUGIN_MB: u64 = 64;

/// `HOST.toml` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostFile {
    address: Option<String>,
    data_dir: Option<PathBuf>,
    storage: Option<String>,
    max_plugin_mb: Option<u64>,
    max_subtasks: Option<u32>,
    max_mappings: Option<u64>,
    workers: Option<usize>,
    fair_cpu: Option<bool>,
    #[serde(default)]
    admin_tokens: Vec<String>,
    s3: Option<S3File>,
    #[serde(default)]
    tenants: Vec<TenantFile>,
}

/// `[s3]` as written: the storage's own credentials, never the
/// environment's.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct S3File {
    endpoint: Option<String>,
    region: Option<String>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    secret_access_key_file: Option<PathBuf>,
    #[serde(default)]
    allow_http: bool,
}

/// A `[[tenants]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantFile {
    name: String,
    #[serde(default)]
    tokens: Vec<String>,
    #[serde(default)]
    quota: QuotaFile,
}

/// `[tenants.quota]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct QuotaFile {
    running_jobs: Option<u32>,
    subtasks: Option<u32>,
    instance_memory_mb: Option<u64>,
    memory_mb: Option<u64>,
    state_mb: Option<u64>,
    storage_mb: Option<u64>,
    emit_mb_per_call: Option<u64>,
    fuel_per_call: Option<u64>,
    cpu_share: Option<u64>,
}

/// What one tenant may use; every field has a default, so a tenant with
/// no `[tenants.quota]` is bounded too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Quota {
    /// Jobs not yet ended.
    pub running_jobs: u32,
    /// Subtasks over all its jobs not yet ended.
    pub subtasks: u32,
    /// Linear memory per plugin instance, MiB (`limits.memory_mb` at most).
    pub instance_memory_mb: u64,
    /// Plugin memory over all its jobs, MiB: guest memories, keyed state,
    /// emitted records.
    pub memory_mb: u64,
    /// Keyed state per instance, MiB (`limits.state_mb` at most).
    pub state_mb: u64,
    /// Bytes its checkpoints and savepoints hold in storage, MiB.
    pub storage_mb: u64,
    /// Bytes one hook call may emit, MiB (`limits.emit_mb_per_call`).
    pub emit_mb_per_call: u64,
    /// CPU per hook call, fuel (`limits.fuel_per_call` at most).
    pub fuel_per_call: u64,
    /// Its weight when tenants contend for the CPU: busy tenants share
    /// the machine in proportion to it.
    pub cpu_share: u64,
}

impl Quota {
    /// A tenant's quota when its config names none.
    pub const DEFAULT: Quota = Quota {
        running_jobs: 16,
        subtasks: 64,
        instance_memory_mb: 256,
        memory_mb: 2048,
        state_mb: 512,
        storage_mb: 10 * 1024,
        emit_mb_per_call: 64,
        fuel_per_call: crate::job::DEFAULT_FUEL_PER_CALL,
        cpu_share: 100,
    };
}

/// A validated tenant.
#[derive(Clone)]
pub struct TenantConfig {
    /// Its name: its namespace in storage.
    pub name: String,
    /// SHA-256 of each of its tokens.
    pub token_hashes: Vec<[u8; 32]>,
    /// What it may use.
    pub quota: Quota,
}

impl std::fmt::Debug for TenantConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantConfig")
            .field("name", &self.name)
            .field("tokens", &self.token_hashes.len())
            .field("quota", &self.quota)
            .finish()
    }
}

/// S3 settings of the storage root.
#[derive(Clone, Default)]
pub struct S3Settings {
    /// `endpoint` (a local S3-compatible server).
    pub endpoint: Option<String>,
    /// `region`.
    pub region: Option<String>,
    /// `access_key_id`.
    pub access_key_id: Option<String>,
    /// The secret, from `secret_access_key` or `secret_access_key_file`.
    pub secret_access_key: Option<String>,
    /// `allow_http`.
    pub allow_http: bool,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id.is_some())
            .field("secret_access_key", &self.secret_access_key.is_some())
            .field("allow_http", &self.allow_http)
            .finish()
    }
}

/// A validated host config.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// The file it was read from.
    pub path: PathBuf,
    /// Where the REST API listens.
    pub address: SocketAddr,
    /// Local directory: compiled-plugin cache, tenants' file directories.
    pub data_dir: PathBuf,
    /// The storage root (a directory or `s3://bucket/prefix`): job
    /// registry, plugins, checkpoints, savepoints.
    pub storage: String,
    /// S3 settings for an `s3://` storage.
    pub s3: S3Settings,
    /// The largest plugin upload, bytes.
    pub max_plugin_bytes: u64,
    /// Whether busy tenants share the CPU by `cpu_share` (on by default;
    /// off leaves it to the kernel, thread by thread).
    pub fair_cpu: bool,
    /// Subtasks the host runs at most, over every tenant (no limit by
    /// default): beyond, a submission is refused (503).
    pub max_subtasks: u32,
    /// Memory mappings the host's jobs may need at most (by default the
    /// kernel's `vm.max_map_count` less room for the host itself): beyond,
    /// a submission is refused (503) before the process runs out of them.
    pub max_mappings: u64,
    /// Worker threads every job's subtasks run on (0: one per core).
    pub workers: usize,
    /// SHA-256 of each admin token (every tenant's metrics, and nothing
    /// else).
    pub admin_token_hashes: Vec<[u8; 32]>,
    /// The tenants, by name.
    pub tenants: Vec<TenantConfig>,
}

/// SHA-256 of `token`, as the config stores it.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A new random token (256 bits, hex) and the `sha256:` line the config
/// takes for it.
pub fn new_token() -> (String, String) {
    let token = format!("weir_{}", hex::encode(rand::random::<[u8; 32]>()));
    let hash = format!("sha256:{}", hex::encode(token_hash(&token)));
    (token, hash)
}

/// Whether `name` can be a tenant's name (and so a storage segment):
/// lowercase ASCII letters, digits, `-` and `_`, starting with a letter or
/// digit.
pub fn valid_tenant_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TENANT_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

impl HostConfig {
    /// Reads and validates the host config at `path`; relative paths in
    /// it resolve against its directory.
    ///
    /// # Errors
    /// [`Error::HostConfig`] naming the file and every field at fault.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let fail = |message: String| Error::HostConfig {
            path: path.to_owned(),
            message,
        };
        let meta = crate::job::regular_file(path).map_err(fail)?;
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(fail(format!(
                "is {} bytes, over the {MAX_CONFIG_BYTES}-byte limit",
                meta.len()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let base = std::path::absolute(base).unwrap_or_else(|_| base.to_owned());
        Self::parse(&text, &base)
            .map_err(|problems| Error::HostConfig {
                path: path.to_owned(),
                message: problems.join("; "),
            })
            .map(|mut c| {
                c.path = path.to_owned();
                c
            })
    }

    /// Validates config text; relative paths resolve against `base`.
    ///
    /// # Errors
    /// Every problem found, each naming its field.
    pub fn parse(text: &str, base: &Path) -> Result<Self, Vec<String>> {
        let file: HostFile =
            toml::from_str(text).map_err(|e| vec![e.to_string().trim_end().to_owned()])?;
        let mut problems = Vec::new();
        let address = file.address.as_deref().unwrap_or(DEFAULT_ADDRESS);
        let address = address.parse().unwrap_or_else(|e| {
            problems.push(format!("address: `{address}` is not HOST:PORT: {e}"));
            SocketAddr::from(([127, 0, 0, 1], 0))
        });
        let data_dir = base.join(file.data_dir.unwrap_or_else(|| "weir-data".into()));
        let storage = match file.storage {
            Some(s) if s.trim().is_empty() => {
                problems.push("storage: must not be empty".into());
                s
            }
            Some(s) if s.starts_with("memory:") => {
                problems.push(format!(
                    "storage: `{s}` is not durable; give a directory or s3://BUCKET/PREFIX"
                ));
                s
            }
            Some(s) if s.contains("://") => s,
            Some(s) => base.join(s).to_string_lossy().into_owned(),
            None => data_dir.join("storage").to_string_lossy().into_owned(),
        };
        let s3 = match file.s3 {
            None => S3Settings::default(),
            Some(s3) => {
                let secret = match (s3.secret_access_key, s3.secret_access_key_file) {
                    (Some(_), Some(_)) => {
                        problems.push(
                            "s3: give secret_access_key or secret_access_key_file, not both".into(),
                        );
                        None
                    }
                    (Some(s), None) => Some(s),
                    (None, Some(f)) => {
                        let f = base.join(f);
                        match std::fs::read_to_string(&f) {
                            Ok(s) => Some(s.trim().to_owned()),
                            Err(e) => {
                                problems.push(format!(
                                    "s3.secret_access_key_file: cannot read {}: {e}",
                                    f.display()
                                ));
                                None
                            }
                        }
                    }
                    (None, None) => None,
                };
                S3Settings {
                    endpoint: s3.endpoint,
                    region: s3.region,
                    access_key_id: s3.access_key_id,
                    secret_access_key: secret,
                    allow_http: s3.allow_http,
                }
            }
        };
        let max_plugin_mb = file.max_plugin_mb.unwrap_or(DEFAULT_MAX_PLUGIN_MB);
        let most = crate::job::MAX_PLUGIN_BYTES >> 20;
        if max_plugin_mb == 0 || max_plugin_mb > most {
            problems.push(format!(
                "max_plugin_mb: must be between 1 and {most}, got {max_plugin_mb}"
            ));
        }
        let admin_token_hashes = file
            .admin_tokens
            .iter()
            .enumerate()
            .filter_map(|(i, t)| parse_hash(t, &format!("admin_tokens[{i}]"), &mut problems))
            .collect();
        if file.tenants.len() > MAX_TENANTS {
            problems.push(format!(
                "tenants: at most {MAX_TENANTS}, got {}",
                file.tenants.len()
            ));
        }
        let mut names = BTreeSet::new();
        let mut tenants = Vec::new();
        for (i, t) in file.tenants.into_iter().enumerate() {
            let field = format!("tenants[{i}]");
            if !valid_tenant_name(&t.name) {
                problems.push(format!(
                    "{field}.name: `{}` must be 1 to {MAX_TENANT_NAME} lowercase letters, digits, \
                     `-` or `_`, starting with a letter or digit",
                    t.name
                ));
            } else if !names.insert(t.name.clone()) {
                problems.push(format!("{field}.name: `{}` is given twice", t.name));
            }
            if t.tokens.len() > MAX_TOKENS {
                problems.push(format!("{field}.tokens: at most {MAX_TOKENS}"));
            }
            let token_hashes = t
                .tokens
                .iter()
                .enumerate()
                .filter_map(|(j, h)| parse_hash(h, &format!("{field}.tokens[{j}]"), &mut problems))
                .collect();
            let quota = quota(&t.quota, &format!("{field}.quota"), &mut problems);
            tenants.push(TenantConfig {
                name: t.name,
                token_hashes,
                quota,
            });
        }
        let mut seen = BTreeSet::new();
        for t in &tenants {
            for h in &t.token_hashes {
                if !seen.insert(*h) {
                    problems.push(format!(
                        "tenants: a token hash of `{}` is also another tenant's",
                        t.name
                    ));
                }
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(HostConfig {
            path: PathBuf::new(),
            address,
            data_dir,
            storage,
            s3,
            max_plugin_bytes: max_plugin_mb << 20,
            fair_cpu: file.fair_cpu.unwrap_or(true),
            max_subtasks: file.max_subtasks.unwrap_or(u32::MAX),
            max_mappings: file.max_mappings.unwrap_or_else(default_max_mappings),
            workers: file.workers.unwrap_or(0),
            admin_token_hashes,
            tenants,
        })
    }

    /// The tenant whose token hashes to `hash`.
    pub fn tenant_of(&self, hash: &[u8; 32]) -> Option<&TenantConfig> {
        self.tenants
            .iter()
            .find(|t| t.token_hashes.iter().any(|h| constant_time_eq(h, hash)))
    }

    /// Whether `hash` is an admin token's.
    pub fn is_admin(&self, hash: &[u8; 32]) -> bool {
        self.admin_token_hashes
            .iter()
            .any(|h| constant_time_eq(h, hash))
    }
}

/// Memory mappings a running job needs: its run thread's four (stack,
/// guard page, signal stack and its guard page), measured.
pub const JOB_MAPPINGS: u64 = 4;

/// Memory mappings each plugin instance needs (its linear memory's
/// reservation, its memory image, its instance data, and the stack its
/// calls run on with its guard page), measured: about 7 per instance.
pub const INSTANCE_MAPPINGS: u64 = 7;

/// The mappings a job of `instances` plugin instances needs.
pub fn job_mappings(instances: u32) -> u64 {
    JOB_MAPPINGS + INSTANCE_MAPPINGS * u64::from(instances)
}

/// The kernel's limit on a process's memory mappings, less 8,192 for the
/// host itself (its runtimes, libraries, heap and compiled plugins).
pub fn default_max_mappings() -> u64 {
    let limit = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(65_530);
    limit.saturating_sub(8_192).max(1_024)
}

/// Compares without stopping at the first difference.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `sha256:<64 hex digits>`.
fn parse_hash(text: &str, field: &str, problems: &mut Vec<String>) -> Option<[u8; 32]> {
    let parsed = text
        .strip_prefix("sha256:")
        .and_then(|h| hex::decode(h).ok())
        .and_then(|b| <[u8; 32]>::try_from(b).ok());
    if parsed.is_none() {
        problems.push(format!(
            "{field}: expected `sha256:` and 64 hex digits (the hash of a token: `weir token` \
             makes one), never the token itself"
        ));
    }
    parsed
}

fn quota(q: &QuotaFile, field: &str, problems: &mut Vec<String>) -> Quota {
    let d = Quota::DEFAULT;
    let mut check = |name: &str, v: Option<u64>, default: u64, most: u64| -> u64 {
        let v = v.unwrap_or(default);
        if v == 0 || v > most {
            problems.push(format!(
                "{field}.{name}: must be between 1 and {most}, got {v}"
            ));
        }
        v
    };
    Quota {
        running_jobs: check(
            "running_jobs",
            q.running_jobs.map(u64::from),
            u64::from(d.running_jobs),
            100_000,
        ) as u32,
        subtasks: check(
            "subtasks",
            q.subtasks.map(u64::from),
            u64::from(d.subtasks),
            1_000_000,
        ) as u32,
        instance_memory_mb: check(
            "instance_memory_mb",
            q.instance_memory_mb,
            d.instance_memory_mb,
            4096,
        ),
        memory_mb: check("memory_mb", q.memory_mb, d.memory_mb, 1 << 20),
        state_mb: check("state_mb", q.state_mb, d.state_mb, 1 << 20),
        storage_mb: check("storage_mb", q.storage_mb, d.storage_mb, 1 << 30),
        emit_mb_per_call: check(
            "emit_mb_per_call",
            q.emit_mb_per_call,
            d.emit_mb_per_call,
            1 << 12,
        ),
        fuel_per_call: check(
            "fuel_per_call",
            q.fuel_per_call,
            d.fuel_per_call,
            crate::job::MAX_FUEL_PER_CALL,
        ),
        cpu_share: check("cpu_share", q.cpu_share, d.cpu_share, 1_000_000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<HostConfig, Vec<String>> {
        HostConfig::parse(text, Path::new("/etc/weir"))
    }

    #[test]
    fn an_empty_config_serves_no_tenant_from_a_local_directory() {
        let c = parse("").unwrap();
        assert_eq!(c.address.to_string(), DEFAULT_ADDRESS);
        assert_eq!(c.data_dir, Path::new("/etc/weir/weir-data"));
        assert_eq!(c.storage, "/etc/weir/weir-data/storage");
        assert!(c.tenants.is_empty());
        // Limited by the kernel's memory mappings, not a subtask count.
        assert_eq!(c.max_subtasks, u32::MAX);
        assert_eq!(c.max_mappings, default_max_mappings());
        assert!(c.max_mappings >= 1_024);
        assert_eq!(c.workers, 0, "one per core");
        let c = parse("max_mappings = 30\nworkers = 3").unwrap();
        assert_eq!((c.max_mappings, c.workers), (30, 3));
        // On a stock kernel (vm.max_map_count 65,530) the default admits
        // over 5,200 one-operator jobs, as docs/serve.md says.
        assert!((65_530 - 8_192) / job_mappings(1) > 5_200);
    }

    #[test]
    fn tenants_are_found_by_the_hash_of_their_token() {
        let (token, hash) = new_token();
        let (other, other_hash) = new_token();
        let c = parse(&format!(
            "[[tenants]]\nname = \"acme\"\ntokens = [\"{hash}\"]\n\
             [tenants.quota]\nrunning_jobs = 2\n\
             [[tenants]]\nname = \"globex\"\ntokens = [\"{other_hash}\"]\n"
        ))
        .unwrap();
        assert_eq!(c.tenant_of(&token_hash(&token)).unwrap().name, "acme");
        assert_eq!(c.tenant_of(&token_hash(&other)).unwrap().name, "globex");
        assert!(c.tenant_of(&token_hash("weir_guess")).is_none());
        assert_eq!(c.tenants[0].quota.running_jobs, 2);
        assert_eq!(c.tenants[1].quota, Quota::DEFAULT);
        // The secret never shows in a debug print.
        assert!(!format!("{c:?}").contains(&hash[7..]));
    }

    #[test]
    fn every_bad_field_is_named() {
        let err = parse(
            "address = \"nowhere\"\nstorage = \"memory://x\"\nmax_plugin_mb = 0\n\
             [[tenants]]\nname = \"Acme/..\"\ntokens = [\"hunter2\"]\n\
             [tenants.quota]\nsubtasks = 0\n\
             [[tenants]]\nname = \"b\"\n[[tenants]]\nname = \"b\"\n",
        )
        .unwrap_err();
        let all = err.join("\n");
        for field in [
            "address:",
            "storage:",
            "max_plugin_mb:",
            "tenants[0].name:",
            "tenants[0].tokens[0]:",
            "tenants[0].quota.subtasks:",
            "tenants[2].name: `b` is given twice",
        ] {
            assert!(all.contains(field), "{field} in {all}");
        }
        assert!(parse("tenant = 1").unwrap_err()[0].contains("unknown field"));
    }

    #[test]
    fn one_token_cannot_open_two_tenants() {
        let (_, hash) = new_token();
        let err = parse(&format!(
            "[[tenants]]\nname = \"a\"\ntokens = [\"{hash}\"]\n\
             [[tenants]]\nname = \"b\"\ntokens = [\"{hash}\"]\n"
        ))
        .unwrap_err();
        assert!(err[0].contains("also another tenant's"), "{err:?}");
    }
}
