//! The controller and what people see of it: `pgctl run` (start-up, tasks, shutdown), the HTTP
//! endpoints, the status report.

pub mod controller;
pub mod http;
pub mod status;
