//! What people use: `pgctl`'s command line ([`cli`]), the controller (`pgctl run`: start-up,
//! tasks, shutdown), the HTTP endpoints and the status report.

pub mod cli;
pub mod controller;
pub mod http;
pub mod status;
