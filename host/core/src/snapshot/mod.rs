//! Snapshots (checkpoints and savepoints) as one model: what they hold is
//! `weir_format::snapshot` (sections with namespaces and redistribution);
//! what to do with them — trigger, complete, assemble metadata, plan a
//! restore, deal state out, collect garbage — is [`protocol`], decisions
//! only, which the runtime and the storage layer carry out.

pub mod protocol;
