//! Locks that stay usable after a panic elsewhere: the data they guard (output buffers,
//! directory lists, template maps) is valid at every await-free step, so a poisoned lock is
//! taken over rather than spreading the panic.

use std::sync::{Mutex, MutexGuard};

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
