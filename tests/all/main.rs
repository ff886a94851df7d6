//! Integration tests against the real Python runtime: one binary, a module per area.

mod common;
mod concurrency;
mod files;
mod limits;
mod python;
mod rich;
mod security;
