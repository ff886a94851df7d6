//! Per-context resource limits.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Resource limits for a context and each of its executions. Every limit is enforced by the
/// host; the guest cannot raise or switch off any of them.
///
/// Deserialises from JSON or TOML with any field omitted taking its default, and refuses
/// unknown fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Wall-clock time one execution may take. Default 30 s. When it runs out the execution
    /// ends with [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) (also while the guest
    /// sleeps or waits) and the context restarts with fresh state.
    #[serde(with = "duration_ms", rename = "timeout_ms")]
    pub timeout: Duration,

    /// Linear memory the guest may use, in bytes. Default 1 GiB, at most 4 GiB (the wasm32
    /// address space). Python sees a normal `MemoryError` when an allocation would exceed it
    /// and the context goes on.
    pub memory_bytes: u64,

    /// Fuel (roughly, WebAssembly instructions) one execution may burn. Default `None`:
    /// unmetered. Requires an engine built with
    /// [`EngineBuilder::fuel_metering`](crate::EngineBuilder::fuel_metering); when it runs out
    /// the execution ends with [`ErrorKind::OutOfFuel`](crate::ErrorKind::OutOfFuel) and the
    /// context restarts.
    pub fuel: Option<u64>,

    /// Bytes of stdout, and separately of stderr, kept per execution. Default 1 MiB. Past it
    /// the stream is truncated and flagged; the code keeps running.
    pub output_bytes: usize,

    /// Bytes the context's writable directories (`/home/user` and `/tmp`) may hold together.
    /// Default 1 GiB. Writes past it fail inside the guest with `OSError: [Errno 28] No space
    /// left on device`; host file uploads past it fail with
    /// [`Error::DiskQuota`](crate::error::Error::DiskQuota).
    pub disk_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(30),
            memory_bytes: 1 << 30,
            fuel: None,
            output_bytes: 1 << 20,
            disk_bytes: 1 << 30,
        }
    }
}

/// The largest memory a wasm32 guest can address.
pub(crate) const MAX_MEMORY_BYTES: u64 = 4 << 30;

impl Limits {
    /// Checks the limits as creating a context does: [`crate::error::Error::InvalidInput`] names the
    /// field that is out of range.
    pub fn validate(&self) -> Result<(), crate::error::Error> {
        let bad = |m: &str| Err(crate::error::Error::InvalidInput(m.to_string()));
        if self.timeout.is_zero() {
            return bad("limits.timeout must be greater than zero");
        }
        if self.timeout > Duration::from_secs(24 * 3600) {
            return bad("limits.timeout must be at most 24 hours");
        }
        if self.memory_bytes < (16 << 20) || self.memory_bytes > MAX_MEMORY_BYTES {
            return bad("limits.memory_bytes must be between 16 MiB and 4 GiB");
        }
        if self.fuel == Some(0) {
            return bad("limits.fuel must be greater than zero when set");
        }
        Ok(())
    }
}

mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis().try_into().unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_missing_fields_and_unknown_fields_are_refused() {
        let l: Limits = serde_json::from_str(r#"{"timeout_ms": 1500}"#).unwrap();
        assert_eq!(l.timeout, Duration::from_millis(1500));
        assert_eq!(l.memory_bytes, Limits::default().memory_bytes);
        assert!(serde_json::from_str::<Limits>(r#"{"timeout": 1}"#).is_err());
        assert!(
            Limits {
                memory_bytes: 1,
                ..Limits::default()
            }
            .validate()
            .is_err()
        );
        assert!(Limits::default().validate().is_ok());
    }
}
