//! The one integration-test binary: every test starts the real server on a random loopback port
//! with a fresh SQLite database and talks to it over HTTP.

mod activation;
mod admin;
mod client;
mod concurrency;
mod device_maps;
mod helpers;
mod tokens;
