//! codebox over HTTP.
#![allow(dead_code)]
mod auth;
mod error;
mod util;
