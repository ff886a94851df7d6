//! What the HTTP front ends share, none of it tied to one wire format: API keys and the
//! caller they name, extractors whose failures are JSON errors, the error answer and the
//! status of each sandbox-layer error, the request log, multipart and raw uploads, and NDJSON
//! streaming of an execution (each front end passes its own event shapes).

pub(crate) mod auth;
pub(crate) mod error;
pub(crate) mod extract;
pub(crate) mod request_log;
pub(crate) mod stream;
pub(crate) mod upload;

use codebox::Engine;

use crate::config::ServerConfig;
use crate::sandbox::Registry;

/// Shared state of the handlers.
#[derive(Debug)]
pub(crate) struct App {
    pub registry: Registry,
    pub keys: auth::Keys,
}

impl App {
    pub fn new(engine: Engine, mut config: ServerConfig) -> App {
        // Only the digests are kept: the plaintext keys leave memory with the config.
        let keys = auth::Keys::new(&std::mem::take(&mut config.api_keys));
        App {
            keys,
            registry: Registry::new(engine, config),
        }
    }
}
