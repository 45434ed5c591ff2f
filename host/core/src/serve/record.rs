//! The job registry's records: one JSON file per hosted job,
//! `tenants/<tenant>/jobs/<id>/job.json` in the host's storage root
//! (`docs/serve.md`, "Storage layout"). A record says what the job is (its
//! job file as submitted, plugins by hash) and what it should be doing;
//! after a restart the host resumes every job whose record says
//! `RUNNING`.

use serde::{Deserialize, Serialize};

use crate::checkpoint::storage::CheckpointStorage;
use crate::error::Error;
use crate::runtime::JobState;

/// The record layout's version; a reader refuses a newer one.
pub const RECORD_VERSION: u32 = 1;
/// The record's file name in the job's directory.
pub const RECORD_FILE: &str = "job.json";
/// The largest record read.
const MAX_RECORD_BYTES: usize = 4 << 20;

/// What the registry knows of one job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRecord {
    /// [`RECORD_VERSION`].
    pub version: u32,
    /// The job's id.
    pub id: String,
    /// Its tenant.
    pub tenant: String,
    /// Its name.
    pub name: String,
    /// The job file as submitted (or as an upgrade rewrote it), plugins
    /// named by hash.
    pub job: String,
    /// `RUNNING` (resumed after a host restart), `FINISHED`, `CANCELED`
    /// or `FAILED`.
    pub state: String,
    /// The savepoint (a name in the tenant's namespace) its first run
    /// restores from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<String>,
    /// `no-claim` or `claim`.
    pub claim_mode: String,
    /// Whether state of uids the job lacks may be dropped.
    pub allow_non_restored: bool,
    /// When it was submitted, ms since the epoch.
    pub submitted_ms: u64,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_ms: Option<u64>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// The savepoint it was stopped with (a name in the tenant's
    /// namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub savepoint: Option<String>,
}

impl JobRecord {
    /// The state the record says, as the lifecycle names it.
    pub fn job_state(&self) -> JobState {
        match self.state.as_str() {
            "RUNNING" => JobState::Running,
            "FINISHED" => JobState::Finished,
            "CANCELED" => JobState::Cancelled,
            _ => JobState::Failed,
        }
    }

    /// Decodes a record read from `file`.
    ///
    /// # Errors
    /// [`Error::Restore`] naming the file for anything malformed, too
    /// large or of another version.
    pub fn decode(file: &str, bytes: &[u8]) -> Result<Self, Error> {
        let bad = |why: String| Error::Restore {
            message: format!("job record {file}: {why}"),
        };
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(bad(format!(
                "is {} bytes, over the {MAX_RECORD_BYTES}-byte limit",
                bytes.len()
            )));
        }
        let record: JobRecord = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if record.version != RECORD_VERSION {
            return Err(bad(format!(
                "version {} is not one this host reads ({RECORD_VERSION})",
                record.version
            )));
        }
        Ok(record)
    }

    /// Writes the record to `jobs/<id>/job.json` of the tenant's storage.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn write(&self, tenant: &CheckpointStorage) -> Result<(), Error> {
        let bytes = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::Internal(format!("encoding a job record: {e}")))?;
        tenant.put(&path(&self.id), bytes.into()).await?;
        Ok(())
    }
}

/// Where job `id`'s record lies in its tenant's storage.
pub fn path(id: &str) -> String {
    format!("jobs/{id}/{RECORD_FILE}")
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_a_newer_one_is_refused() {
        let r = JobRecord {
            version: RECORD_VERSION,
            id: "ab".repeat(16),
            tenant: "acme".into(),
            name: "wc".into(),
            job: "name = \"wc\"".into(),
            state: "RUNNING".into(),
            restore: Some("nightly".into()),
            claim_mode: "no-claim".into(),
            allow_non_restored: false,
            submitted_ms: 1,
            ended_ms: None,
            failure: None,
            savepoint: None,
        };
        let bytes = serde_json::to_vec(&r).unwrap();
        assert_eq!(JobRecord::decode("f", &bytes).unwrap(), r);
        assert_eq!(r.job_state(), JobState::Running);
        let newer = String::from_utf8(bytes)
            .unwrap()
            .replace("\"version\":1", "\"version\":2");
        let err = JobRecord::decode("f", newer.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("version 2"), "{err}");
        assert!(JobRecord::decode("f", b"{}").is_err());
    }
}
