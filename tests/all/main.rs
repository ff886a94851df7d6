//! Integration tests against the real Python runtime: one binary, a module per area.

mod common;
mod concurrency;
mod e2b;
mod files;
mod javascript;
mod limits;
mod operations;
mod perf;
mod python;
mod rich;
mod security;
mod server;
mod templates;
