//! The memory budget: while it lives, each context reserves its memory limit from one
//! server-wide pool, so the limits of all live contexts can never add up to more than the
//! machine has. A reservation is given back when it drops, whichever way its context goes
//! (deleted, its sandbox killed or expired, a failed start).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::SandboxError;

/// Bytes not reserved by a live context.
#[derive(Debug, Clone)]
pub(crate) struct MemoryBudget(Arc<AtomicU64>);

impl MemoryBudget {
    pub fn new(bytes: u64) -> MemoryBudget {
        MemoryBudget(Arc::new(AtomicU64::new(bytes)))
    }

    /// Takes `bytes` from the budget, or says why not.
    pub fn reserve(&self, bytes: u64) -> Result<Reservation, SandboxError> {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                left.checked_sub(bytes)
            })
            .map_err(|_| SandboxError::MemoryBudget)?;
        Ok(Reservation {
            budget: self.0.clone(),
            bytes,
        })
    }
}

/// A context's share of the budget.
#[derive(Debug)]
pub(crate) struct Reservation {
    budget: Arc<AtomicU64>,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.fetch_add(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_are_refused_past_the_budget_and_given_back() {
        let budget = MemoryBudget::new(100);
        let a = budget.reserve(60).unwrap();
        assert!(matches!(
            budget.reserve(41),
            Err(SandboxError::MemoryBudget)
        ));
        let b = budget.reserve(40).unwrap();
        drop(a);
        drop(b);
        budget.reserve(100).unwrap();
    }
}
