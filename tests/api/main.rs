//! The one integration-test binary: every test starts the real server on a random loopback port
//! with a fresh database (SQLite, or PostgreSQL when TEST_PG_URL is set) and talks to it over HTTP.

mod activation;
mod admin;
mod azure;
mod azure_standin;
mod browser;
mod client;
mod concurrency;
mod connectors;
mod console;
mod device_maps;
mod directory;
mod graph_sync;
mod helpers;
mod imd_v2;
mod imd_v5;
mod ldap_mappings;
mod metrics;
mod openapi;
mod process;
mod replicas;
mod resolvers;
mod secrets_logging;
mod shutdown;
mod storage;
mod sync;
mod sync_support;
mod tokens;
