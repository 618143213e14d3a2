//! imd: integrated mass deployment activation service.
//! `main.rs` is a thin wrapper around [`cli`]; [`startup::Application`] runs the server.

pub mod activation;
pub mod bench;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod connector;
pub mod console;
pub mod crypto;
pub mod demo;
pub mod devicemap;
pub mod directory;
pub mod doctor;
pub mod domain;
pub mod http;
pub mod loadgen;
pub mod metrics;
pub mod resolve;
pub mod startup;
pub mod store;
pub mod sync;
pub mod telemetry;
pub mod tokens;
