//! The controller and what people see of it: `pgctl run` (start-up, tasks, shutdown), the HTTP
//! endpoints, metrics, the status report and its tables.

pub mod controller;
pub mod http;
pub mod metrics;
pub mod status;
pub mod table;
