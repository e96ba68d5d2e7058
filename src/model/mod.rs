//! The vocabulary every stage shares, on the ground floor: it depends on nothing else in the
//! crate and does no I/O. Targets and how they are backed up ([`target`]), backup ids and the
//! storage layout ([`layout`]), the manifest ([`manifest`]), retention policies ([`keep`]), cron schedules ([`schedule`]), what a backup holds
//! for restore drills ([`facts`]).

pub mod encryption;
pub mod facts;
pub mod keep;
pub mod layout;
pub mod manifest;
pub mod schedule;
pub mod target;

pub use keep::KeepPolicy;
pub use layout::{BackupId, Kind};
pub use manifest::Manifest;
pub use schedule::Schedule;
pub use target::{Compression, Databases, Format, Method, TargetId};
