//! Backup jobs: the runner (locks, slots, retries, the job set drained on shutdown) and one
//! logical or physical backup (dumps through the pipeline into the store, manifest last).

pub mod backup;
pub mod hook;
pub mod metrics;
pub mod runner;
