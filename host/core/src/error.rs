//! The host's error type. Every variant names what is at fault (file,
//! field, operator uid, plugin) and has a [`ErrorKind`] that decides the
//! exit code and whether retrying could help.

use std::path::PathBuf;

use thiserror::Error as ThisError;

/// Who is at fault for an [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad input from the user: a job file, a plugin, a record a plugin
    /// rejects. Retrying without a change cannot help.
    User,
    /// Something outside Weir failed: a file system, a storage service.
    External,
    /// A broken invariant inside Weir.
    Internal,
    /// The user stopped the job (a signal); not a failure of anything.
    Cancelled,
}

/// One problem found in a job file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The field at fault, as a TOML path such as `operators[1].uid`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Everything that can fail in the host.
#[derive(Debug, ThisError)]
#[non_exhaustive]
pub enum Error {
    /// The job file could not be read.
    #[error("cannot read job file {path}: {source}")]
    JobRead {
        /// The job file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The job file is not valid TOML or does not match the schema.
    #[error("{path}: {message}")]
    JobParse {
        /// The job file.
        path: PathBuf,
        /// The parser's message, with line, column and field.
        message: String,
    },
    /// The job file parsed but describes an invalid job.
    #[error("{path}: invalid job:\n{}", problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    InvalidJob {
        /// The job file.
        path: PathBuf,
        /// Every problem found, in file order.
        problems: Vec<Problem>,
    },
    /// A plugin file could not be loaded as a Weir operator component.
    #[error("operator `{uid}`: plugin {plugin}: {message}")]
    Plugin {
        /// The operator using the plugin.
        uid: String,
        /// The plugin file.
        plugin: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An operator instance trapped, exceeded a limit, or returned an error.
    #[error("operator `{uid}` (plugin {plugin}) subtask {subtask} failed in `{hook}`: {message}")]
    OperatorFailed {
        /// The operator's uid.
        uid: String,
        /// The plugin file.
        plugin: PathBuf,
        /// The failing subtask.
        subtask: u32,
        /// The hook that failed (`open`, `process`, …).
        hook: &'static str,
        /// The trap or the guest's error message.
        message: String,
    },
    /// The compiled-plugin cache (or its key) cannot be used safely: it
    /// belongs to another user, others may write to it, or it cannot be
    /// created.
    #[error("plugin cache {path}: {message}")]
    PluginCache {
        /// The cache directory or key file.
        path: PathBuf,
        /// What is wrong, and how to fix it.
        message: String,
    },
    /// An operator instance hit one of its limits (`[limits]` in the job
    /// file): the message names the limit and its value. Not retried, since
    /// the same input hits the same limit again.
    #[error("operator `{uid}` (plugin {plugin}) subtask {subtask} failed in `{hook}`: {message}")]
    LimitExceeded {
        /// The operator's uid.
        uid: String,
        /// The plugin file.
        plugin: PathBuf,
        /// The failing subtask.
        subtask: u32,
        /// The hook that was running (`open`, `process`, …).
        hook: &'static str,
        /// Which limit, its value and its knob.
        message: String,
    },
    /// A record violates what the dataflow requires (e.g. no key on a hash
    /// edge).
    #[error("vertex `{uid}`: {message}")]
    BadRecord {
        /// The vertex that produced or received the record.
        uid: String,
        /// What is wrong.
        message: String,
    },
    /// A source or sink failed to read or write.
    #[error("{role} `{uid}`: {path}: {source}")]
    Io {
        /// `source` or `sink`.
        role: &'static str,
        /// The vertex's uid.
        uid: String,
        /// The file involved.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A broker connector could not reach or use its broker: a connection
    /// refused or lost, a timeout, an error the broker returned. The broker
    /// may be back on retry, so the restart strategy applies.
    #[error("{role} `{uid}`: {message}")]
    Broker {
        /// `source` or `sink`.
        role: &'static str,
        /// The vertex's uid.
        uid: String,
        /// What failed, naming the broker and what was asked of it.
        message: String,
    },
    /// A connector refused what it was given, which a retry would give it
    /// again: a record larger than the sink allows, more pending output
    /// than its limit, a stream or credentials file that does not exist.
    #[error("{role} `{uid}`: {message}")]
    Connector {
        /// `source` or `sink`.
        role: &'static str,
        /// The vertex's uid.
        uid: String,
        /// What was refused and how to fix it.
        message: String,
    },
    /// A `file` source's input is shorter than the offset it was read to
    /// (restored, or reached while running): it shrank or was truncated,
    /// so what follows the offset is not the input the job was reading.
    #[error(
        "source `{uid}`: {path} is {size} bytes, shorter than offset {offset} it had been read to: the input shrank or was truncated; restore it, or start the job from scratch"
    )]
    SourceShrank {
        /// The source's uid.
        uid: String,
        /// The input file.
        path: PathBuf,
        /// The offset read to.
        offset: u64,
        /// The file's size now.
        size: u64,
    },
    /// Checkpoint storage failed, or its URL is invalid.
    #[error("checkpoint storage: {0}")]
    Storage(#[from] crate::checkpoint::storage::StorageError),
    /// A checkpoint file is truncated, corrupt or of an unknown version.
    #[error("corrupt checkpoint: {0}")]
    Format(#[from] crate::checkpoint::format::FormatError),
    /// A checkpoint does not fit the job it should restore.
    #[error("cannot restore: {message}")]
    Restore {
        /// What does not match, naming the checkpoint.
        message: String,
    },
    /// More checkpoints failed in a row than the job tolerates.
    #[error("checkpointing failed: {reason}")]
    CheckpointFailed {
        /// The last failure.
        reason: String,
    },
    /// The job's storage holds checkpoints but no restore was asked for.
    #[error(
        "job `{job}` has {count} completed checkpoint(s) in {location} (latest: chk-{latest}); \
         it will not silently start from scratch.\n  \
         resume from the latest:   weir run {job_file} --from-latest\n  \
         resume from a given one:  weir run {job_file} -s {location}/chk-{latest}\n  \
         start from scratch:       weir checkpoints {job_file} --delete, then run again"
    )]
    CheckpointsExist {
        /// The job's name.
        job: String,
        /// The job file, as given.
        job_file: String,
        /// The job's checkpoint directory.
        location: String,
        /// How many completed checkpoints.
        count: usize,
        /// The latest one's id.
        latest: u64,
    },
    /// The job was cancelled (SIGINT, SIGTERM) before it finished.
    #[error("job `{job}` cancelled; {checkpoints}")]
    Cancelled {
        /// The job's name.
        job: String,
        /// What became of its checkpoints (`retention_on_cancel`).
        checkpoints: String,
    },
    /// A savepoint request is invalid or cannot be served now (no target,
    /// the job is finishing, a bad location): the requester's to fix.
    #[error("savepoint: {message}")]
    Savepoint {
        /// What went wrong, naming the job or the location.
        message: String,
    },
    /// A savepoint was triggered and failed while it was taken: a subtask
    /// or the storage failed, or it expired. The job goes on; asking again
    /// may succeed.
    #[error("savepoint: {message}")]
    SavepointFailed {
        /// What failed, naming the savepoint.
        message: String,
    },
    /// The state backend failed under an operator's call (the host's
    /// failure, not the plugin's; see `StateError::Backend`).
    #[error("operator `{uid}` subtask {subtask}: {message}")]
    StateBackend {
        /// The operator's uid.
        uid: String,
        /// The subtask.
        subtask: u32,
        /// What failed.
        message: String,
    },
    /// The REST API could not listen on its address.
    #[error(
        "cannot serve the REST API on {address}: {source}; choose another address with \
         --rest-address (or WEIR_REST_ADDRESS), port 0 for any free port"
    )]
    ApiBind {
        /// The address asked for.
        address: std::net::SocketAddr,
        /// Why binding failed.
        source: std::io::Error,
    },
    /// A job's REST API could not be reached, or answered with something
    /// that is not the Weir API.
    #[error(
        "cannot reach the REST API at {address}: {message}; is the job running? \
         Point to its API with --address (or WEIR_ADDRESS)"
    )]
    ApiUnreachable {
        /// The API's base URL.
        address: String,
        /// What failed.
        message: String,
    },
    /// The REST API refused a request (unknown job, job already ended, …).
    #[error("{message} (HTTP {status} from {address})")]
    ApiRequest {
        /// The API's base URL.
        address: String,
        /// The HTTP status.
        status: u16,
        /// The API's error message.
        message: String,
    },
    /// A job id given to a client command (`weir stop`, …) as a prefix
    /// matches no running job, or more than one.
    #[error("job id `{prefix}` {problem} at {address}")]
    JobIdPrefix {
        /// The id or prefix as given.
        prefix: String,
        /// The API's base URL.
        address: String,
        /// `matches no job (…)` or `is ambiguous: it matches …`.
        problem: String,
    },
    /// The host config of `weir serve` is unreadable or invalid.
    #[error("host config {path}: {message}")]
    HostConfig {
        /// The config file.
        path: PathBuf,
        /// What is wrong, naming the fields.
        message: String,
    },
    /// A broken invariant.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Who is at fault, which decides the exit code and retries.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::JobParse { .. }
            | Error::InvalidJob { .. }
            | Error::Plugin { .. }
            | Error::OperatorFailed { .. }
            | Error::LimitExceeded { .. }
            | Error::PluginCache { .. }
            | Error::BadRecord { .. }
            | Error::Connector { .. }
            | Error::SourceShrank { .. } => ErrorKind::User,
            // A job file that does not exist, or is not a regular file or
            // too big, is the user's mistake.
            Error::JobRead { source, .. }
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::InvalidInput
                ) =>
            {
                ErrorKind::User
            }
            Error::JobRead { .. }
            | Error::Io { .. }
            | Error::Broker { .. }
            | Error::SavepointFailed { .. }
            | Error::StateBackend { .. } => ErrorKind::External,
            Error::Storage(e) => e.kind(),
            Error::Format(_) | Error::CheckpointFailed { .. } => ErrorKind::External,
            Error::Restore { .. } | Error::CheckpointsExist { .. } | Error::Savepoint { .. } => {
                ErrorKind::User
            }
            Error::ApiBind { .. } | Error::JobIdPrefix { .. } | Error::HostConfig { .. } => {
                ErrorKind::User
            }
            Error::ApiUnreachable { .. } => ErrorKind::External,
            Error::ApiRequest { status, .. } if *status < 500 => ErrorKind::User,
            Error::ApiRequest { .. } => ErrorKind::External,
            Error::Internal(_) => ErrorKind::Internal,
            Error::Cancelled { .. } => ErrorKind::Cancelled,
        }
    }

    /// Whether restarting the job from its latest checkpoint could get past
    /// this failure, so the restart strategy may retry it: an I/O, storage
    /// or state-backend error, or a checkpoint failure may not recur; a
    /// plugin that does not load, a limit hit or a checkpoint that does not
    /// fit the job will. An operator's own failure (a trap, an error it
    /// returned, a record the dataflow refuses) recurs given the same input
    /// and state — a plugin has no I/O — so it is retried only when the job
    /// says so (`operator_errors`, `[restart] operator_errors = "restart"`).
    pub fn restartable(&self, operator_errors: crate::job::OperatorErrors) -> bool {
        match self {
            Error::OperatorFailed { .. } | Error::BadRecord { .. } => {
                operator_errors == crate::job::OperatorErrors::Restart
            }
            Error::Io { .. }
            | Error::Broker { .. }
            | Error::StateBackend { .. }
            | Error::CheckpointFailed { .. } => true,
            Error::Storage(e) => e.kind() == ErrorKind::External,
            Error::JobRead { .. }
            | Error::JobParse { .. }
            | Error::InvalidJob { .. }
            | Error::Plugin { .. }
            | Error::LimitExceeded { .. }
            | Error::PluginCache { .. }
            | Error::Format(_)
            | Error::SourceShrank { .. }
            | Error::Connector { .. }
            | Error::Restore { .. }
            | Error::CheckpointsExist { .. }
            | Error::Savepoint { .. }
            | Error::SavepointFailed { .. }
            | Error::ApiBind { .. }
            | Error::ApiUnreachable { .. }
            | Error::ApiRequest { .. }
            | Error::JobIdPrefix { .. }
            | Error::HostConfig { .. }
            | Error::Cancelled { .. }
            | Error::Internal(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::OperatorErrors;

    #[test]
    fn operator_failures_restart_only_when_the_job_says_so() {
        let trap = Error::OperatorFailed {
            uid: "count".into(),
            plugin: "count.wasm".into(),
            subtask: 0,
            hook: "process",
            message: "trapped: unreachable".into(),
        };
        assert_eq!(trap.kind(), ErrorKind::User);
        assert!(!trap.restartable(OperatorErrors::Fail));
        assert!(trap.restartable(OperatorErrors::Restart));
        // A savepoint that failed while taken is not the requester's fault;
        // one refused is.
        let failed = Error::SavepointFailed {
            message: "savepoint 3 failed: storage failure".into(),
        };
        assert_eq!(failed.kind(), ErrorKind::External);
        let refused = Error::Savepoint {
            message: "no savepoint directory".into(),
        };
        assert_eq!(refused.kind(), ErrorKind::User);
        // The host's own state backend failing is retried like storage.
        let backend = Error::StateBackend {
            uid: "count".into(),
            subtask: 1,
            message: "the state backend failed: i/o".into(),
        };
        assert_eq!(backend.kind(), ErrorKind::External);
        assert!(backend.restartable(OperatorErrors::Fail));
    }
}
