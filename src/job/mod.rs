//! Backup jobs: the runner (locks, slots, retries, the job set drained on shutdown) and one
//! logical or physical backup (dumps through the pipeline into the store, manifest last); restore
//! drills of the latest backup into a throwaway server; scheduled copies into another service.

pub mod backup;
pub mod drill;
pub mod hook;
pub mod metrics;
pub mod runner;
pub mod sync;
