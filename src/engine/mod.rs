//! The engine: the only code that talks to Docker (bollard) and runs the Postgres client
//! programs, in the target (`docker exec`) or in the sidecar (connect mode).

pub mod container;
pub mod docker;
pub mod pg;
