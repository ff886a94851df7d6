//! Server settings: every field of [`ServerConfig`] with its documented default, and where
//! the API keys come from.

use codebox::Limits;
use std::path::PathBuf;
use std::time::Duration;

/// Server settings. Every field has a documented default.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Accepted API keys. Every route but `/health` and `/openapi.json` needs one. Empty means
    /// no key is valid (every request is refused).
    pub api_keys: Vec<String>,
    /// Most live sandboxes. Default 100; past it, creating one answers 429.
    pub max_sandboxes: usize,
    /// Most contexts per sandbox. Default 16.
    pub max_contexts_per_sandbox: usize,
    /// Sandbox lifetime when the client gives none. Default 300 s.
    pub sandbox_timeout: Duration,
    /// Longest lifetime a client may ask for (also when extending). Default 3600 s.
    pub max_sandbox_timeout: Duration,
    /// Limits of every context. Default: [`Limits::default`] with a 300 s execution timeout
    /// (clients may ask for less, or more up to 3600 s, per execution).
    pub limits: Limits,
    /// Largest JSON request body (this bounds the code size). Default 16 MiB.
    pub max_body_bytes: usize,
    /// Largest file upload. Default 512 MiB (the sandbox's disk quota also applies).
    pub max_upload_bytes: u64,
    /// Where sandbox home directories are created. Default: the system temp directory.
    pub data_dir: PathBuf,
    /// Memory all live contexts together may be allowed to use: each context reserves its
    /// `limits.memory_bytes` from this budget while it lives, and past it creating a context
    /// answers 429, so the limits can never add up to more than the machine has. Default:
    /// three quarters of physical memory.
    pub memory_budget_bytes: u64,
    /// At shutdown, how long requests in flight may go on before every sandbox is killed
    /// (which ends running executions and their streams). Default 10 s.
    pub shutdown_grace: Duration,
}

impl ServerConfig {
    /// The defaults, accepting `api_keys`.
    pub fn new(api_keys: Vec<String>) -> ServerConfig {
        ServerConfig {
            api_keys,
            max_sandboxes: 100,
            max_contexts_per_sandbox: 16,
            sandbox_timeout: Duration::from_secs(300),
            max_sandbox_timeout: Duration::from_secs(3600),
            limits: Limits {
                timeout: Duration::from_secs(300),
                ..Limits::default()
            },
            max_body_bytes: 16 << 20,
            max_upload_bytes: 512 << 20,
            data_dir: std::env::temp_dir(),
            memory_budget_bytes: physical_memory() / 4 * 3,
            shutdown_grace: Duration::from_secs(10),
        }
    }

    /// API keys from `CODEBOX_API_KEYS` (comma-separated) and, if given, a file with one key
    /// per line (blank lines and `#` comments ignored).
    pub fn keys_from_env_and_file(file: Option<&std::path::Path>) -> std::io::Result<Vec<String>> {
        let mut keys: Vec<String> = std::env::var("CODEBOX_API_KEYS")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(str::to_string)
            .collect();
        if let Some(file) = file {
            let text = std::fs::read_to_string(file)?;
            keys.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_string),
            );
        }
        Ok(keys)
    }
}

/// Physical memory from /proc/meminfo; 8 GiB where it cannot be read.
fn physical_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(8 << 30, |kib| kib * 1024)
}
