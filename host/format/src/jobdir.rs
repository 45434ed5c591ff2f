//! The files beside a job's checkpoints (`docs/checkpoint-format.md`,
//! "Other files in a job's directory"): the restore record `_restore`,
//! which remembers the snapshot a run was restored from until one of its
//! checkpoints completes, and the job lease `_lease/<generation>`, which
//! names the run that owns the directory. Both are JSON with a `format`
//! and a `version`, like `_metadata`.

use serde::{Deserialize, Serialize};

use crate::checkpoint::CheckpointId;
use crate::frame::{FormatError, metadata_fields};

/// What a run restored from a snapshot may do with it (Flink's
/// `RecoveryClaimMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClaimMode {
    /// The snapshot is never modified or deleted; the run's first
    /// checkpoint is a full one of its own.
    #[default]
    NoClaim,
    /// The run owns the snapshot: once a newer checkpoint of the run
    /// subsumes it, it is deleted like any checkpoint of the run.
    Claim,
}

impl std::str::FromStr for ClaimMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "no-claim" => Ok(ClaimMode::NoClaim),
            "claim" => Ok(ClaimMode::Claim),
            other => Err(format!(
                "unknown claim mode `{other}`: expected `no-claim` or `claim`"
            )),
        }
    }
}

/// The file in a job's checkpoint directory that remembers the snapshot a
/// run was restored from (`-s`) until a checkpoint of that run completes
/// (`docs/checkpoint-format.md`, "The restore record").
pub const RESTORE_FILE: &str = "_restore";

/// The `format` field of a restore record.
pub const RESTORE_FORMAT: &str = "weir-restore";

/// The restore record version this build writes (and the newest it reads).
pub const RESTORE_VERSION: u32 = 1;

/// A run restored from a snapshot, remembered durably so that a process
/// killed before the run's first checkpoint resumes from the snapshot
/// (`--from-latest`), not from scratch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreRecord {
    /// The record version.
    pub version: u32,
    /// The snapshot's directory: an absolute local path or a storage URL.
    pub location: String,
    /// The snapshot's id.
    pub snapshot_id: u64,
    /// Whether the run owns the snapshot.
    pub claim_mode: ClaimMode,
    /// Whether the run dropped state of uids the job does not have (`-n`).
    pub allow_non_restored: bool,
    /// The first checkpoint id the restored run takes: a completed
    /// checkpoint with this id or a higher one supersedes the record.
    pub first_checkpoint: CheckpointId,
    /// When the record was written, Unix epoch milliseconds.
    pub written_ms: u64,
}

#[derive(Serialize)]
struct RestoreFile<'a> {
    format: &'static str,
    #[serde(flatten)]
    record: &'a RestoreRecord,
}

impl RestoreRecord {
    /// Encodes the record as pretty-printed JSON.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(&RestoreFile {
            format: RESTORE_FORMAT,
            record: self,
        })
        .expect("invariant: a restore record has only string keys and integers");
        out.push(b'\n');
        out
    }

    /// Decodes a restore record read from `file` (display path).
    ///
    /// # Errors
    /// [`FormatError`] naming `file`: not JSON, another format, a
    /// newer version, missing or unknown fields, or a location that is
    /// empty or holds a control character (NUL included).
    pub fn decode(file: &str, bytes: &[u8]) -> Result<Self, FormatError> {
        let fields = metadata_fields(
            file,
            bytes,
            RESTORE_FORMAT,
            "restore record",
            RESTORE_VERSION,
        )?;
        let record: RestoreRecord = serde_json::from_value(serde_json::Value::Object(fields))
            .map_err(|e| FormatError::new(file, format!("invalid restore record: {e}")))?;
        if record.location.trim().is_empty() || record.location.chars().any(char::is_control) {
            return Err(FormatError::new(
                file,
                format!(
                    "field `location`: {:?} is not a snapshot location (empty, or a control character)",
                    record.location
                ),
            ));
        }
        Ok(record)
    }

    /// Whether a completed checkpoint among `completed` supersedes it.
    pub fn superseded_by(&self, completed: &[CheckpointId]) -> bool {
        completed.iter().any(|&id| id >= self.first_checkpoint)
    }
}

/// The directory of a job's lease files.
pub const LEASE_DIR: &str = "_lease";
/// The `format` field of a lease file.
pub const LEASE_FORMAT: &str = "weir-lease";
/// The lease file version this build writes (and the newest it reads).
pub const LEASE_VERSION: u32 = 1;
/// Who holds a lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Holder {
    /// The host name.
    pub host: String,
    /// The process id on that host.
    pub pid: u32,
    /// The run's job id (`weir list`).
    pub run_id: String,
}

/// One generation of a lease, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseFile {
    /// The file version.
    pub version: u32,
    /// The job.
    pub job: String,
    /// Its generation (also its file name).
    pub generation: u64,
    /// Who holds it.
    pub holder: Holder,
    /// When it expires unless renewed, Unix epoch milliseconds.
    pub expires_ms: u64,
}

#[derive(Serialize)]
struct Encoded<'a> {
    format: &'static str,
    #[serde(flatten)]
    lease: &'a LeaseFile,
}

impl LeaseFile {
    /// Encodes the lease as JSON.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(&Encoded {
            format: LEASE_FORMAT,
            lease: self,
        })
        .expect("invariant: a lease has only string keys and integers");
        out.push(b'\n');
        out
    }

    /// Decodes a lease file read from `file` (display path).
    ///
    /// # Errors
    /// [`FormatError`] naming `file`: not a lease, a newer version, or
    /// missing or unknown fields.
    pub fn decode(file: &str, bytes: &[u8]) -> Result<Self, FormatError> {
        let fields = metadata_fields(file, bytes, LEASE_FORMAT, "lease", LEASE_VERSION)?;
        serde_json::from_value(serde_json::Value::Object(fields))
            .map_err(|e| FormatError::new(file, format!("invalid lease: {e}")))
    }
}
