//! Fallible allocation of the vectors whose length a job spec or a peer decides: a model's
//! parameters, a round's running sum, a downloaded model. A spec passes a size budget before
//! anything is built (the coordinator's `max_model_params`, the partner's own), but memory can
//! still run out on a busy machine; then the job fails with this error instead of the process
//! aborting (which, on a coordinator, would resume the same job into the same abort).

/// An allocation the system could not make.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("out of memory: cannot allocate {what} of {len} elements ({bytes} bytes)")]
pub struct AllocError {
    /// What was being allocated.
    pub what: &'static str,
    /// Elements asked for.
    pub len: usize,
    /// Bytes asked for (saturating).
    pub bytes: usize,
}

/// A vector of `len` copies of `value`, or an error if the memory cannot be had.
pub fn filled<T: Clone>(len: usize, value: T, what: &'static str) -> Result<Vec<T>, AllocError> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| AllocError {
        what,
        len,
        bytes: len.saturating_mul(std::mem::size_of::<T>()),
    })?;
    v.resize(len, value);
    Ok(v)
}

/// Reserves room for `additional` more elements in `v`, or says it cannot.
pub fn reserve<T>(v: &mut Vec<T>, additional: usize, what: &'static str) -> Result<(), AllocError> {
    v.try_reserve(additional).map_err(|_| AllocError {
        what,
        len: v.len().saturating_add(additional),
        bytes: v
            .len()
            .saturating_add(additional)
            .saturating_mul(std::mem::size_of::<T>()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_impossible_allocation_is_an_error_not_an_abort() {
        let err = filled(usize::MAX / 4, 0.0f64, "a model").unwrap_err();
        assert_eq!(err.what, "a model");
        assert_eq!(err.bytes, usize::MAX);
        assert!(
            err.to_string()
                .starts_with("out of memory: cannot allocate a model")
        );
        let mut v = vec![1u32; 3];
        assert!(reserve(&mut v, usize::MAX / 2, "a sum").is_err());
        assert_eq!(filled(3, 7u32, "x").unwrap(), vec![7, 7, 7]);
        reserve(&mut v, 10, "a sum").unwrap();
        assert!(v.capacity() >= 13);
    }
}
