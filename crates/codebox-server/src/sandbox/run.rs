//! Where an execution runs and with what: the request every front end builds from its own
//! wire format, its checks (language, timeout, context id or language but not both), and the
//! context it goes to: the named one, or the sandbox's default for the language, made on
//! first use.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use codebox::{ExecuteRequest, Language};

use super::{ContextEntry, Registry, Sandbox, SandboxError};
use crate::config::ServerConfig;
use crate::util::clip;

/// Parses a language name as clients send it (trimmed, any case; `js`, `ts` accepted);
/// `None` or blank means Python.
pub(crate) fn parse_language(name: Option<&str>) -> Result<Language, SandboxError> {
    match name.map(str::trim).filter(|n| !n.is_empty()) {
        None => Ok(Language::Python),
        Some(name) => Language::parse(name).ok_or_else(|| SandboxError::UnknownLanguage {
            name: clip(name, 40),
        }),
    }
}

/// An execution request as the front ends receive it.
#[derive(Debug, Default)]
pub(crate) struct RunRequest {
    pub code: String,
    pub context_id: Option<String>,
    pub language: Option<String>,
    /// Environment variables for this execution only.
    pub env: BTreeMap<String, String>,
    /// Seconds; `None` for the context's limit.
    pub timeout: Option<f64>,
}

impl RunRequest {
    /// Checks the request and finds (or creates) the context it goes to.
    pub async fn resolve(
        self,
        registry: &Registry,
        sandbox: &Sandbox,
    ) -> Result<(Arc<ContextEntry>, ExecuteRequest), SandboxError> {
        let timeout = execution_timeout(&registry.config, self.timeout)?;
        let entry = pick_context(
            registry,
            sandbox,
            self.context_id.as_deref(),
            self.language.as_deref(),
        )
        .await?;
        let mut request = execute_request(self.code, timeout);
        for (key, value) in self.env {
            request = request.env(key, value);
        }
        Ok((entry, request))
    }
}

/// The context an execution goes to: the named one, or the sandbox's default for the language.
async fn pick_context(
    registry: &Registry,
    sandbox: &Sandbox,
    context_id: Option<&str>,
    language: Option<&str>,
) -> Result<Arc<ContextEntry>, SandboxError> {
    match (context_id, language) {
        (Some(_), Some(_)) => Err(SandboxError::InvalidInput(
            "give either a context id or a language, not both".into(),
        )),
        (Some(cid), None) => sandbox.context(cid),
        (None, language) => {
            let language = parse_language(language)?;
            registry.default_context(sandbox, language).await
        }
    }
}

/// A client's execution timeout in seconds, checked against the longest sandbox lifetime.
pub(super) fn execution_timeout(
    config: &ServerConfig,
    seconds: Option<f64>,
) -> Result<Option<Duration>, SandboxError> {
    let max = config.max_sandbox_timeout;
    match seconds {
        None => Ok(None),
        Some(s) if s.is_finite() && s > 0.0 && s <= max.as_secs_f64() => {
            Ok(Some(Duration::from_secs_f64(s)))
        }
        Some(_) => Err(SandboxError::InvalidTimeout {
            max_secs: max.as_secs(),
        }),
    }
}

/// The engine request for `code`, with the timeout if one was given.
pub(super) fn execute_request(code: String, timeout: Option<Duration>) -> ExecuteRequest {
    let request = ExecuteRequest::new(code);
    match timeout {
        Some(timeout) => request.timeout(timeout),
        None => request,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn languages_parse_as_clients_send_them() {
        assert_eq!(parse_language(None).unwrap(), Language::Python);
        assert_eq!(parse_language(Some("  ")).unwrap(), Language::Python);
        assert_eq!(parse_language(Some(" JS ")).unwrap(), Language::JavaScript);
        assert_eq!(parse_language(Some("ts")).unwrap(), Language::TypeScript);
        let long = "x".repeat(1000);
        let err = parse_language(Some(&long)).unwrap_err();
        assert!(matches!(&err, SandboxError::UnknownLanguage { name } if name.len() == 40));
        assert!(
            err.to_string().ends_with("python, javascript, typescript"),
            "{err}"
        );
    }

    #[test]
    fn execution_timeouts_are_bounded() {
        let config = ServerConfig::new(vec![]);
        assert_eq!(execution_timeout(&config, None).unwrap(), None);
        assert_eq!(
            execution_timeout(&config, Some(1.5)).unwrap(),
            Some(Duration::from_millis(1500))
        );
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 3601.0] {
            assert!(matches!(
                execution_timeout(&config, Some(bad)),
                Err(SandboxError::InvalidTimeout { max_secs: 3600 })
            ));
        }
    }
}
