//! Buffers handed back once the pipeline is done with them, so that in the
//! steady state read chunks and batch buffers reuse memory that is already
//! mapped instead of faulting in fresh pages. glibc returns freed blocks of
//! this size to the kernel (or trims the arena top) and the next allocation
//! faults every page in again: about 65,000 minor faults per 2M events
//! before this, 5% of the pipe's CPU (BENCHMARKS.md, "Buffer reuse").
//!
//! A pool keeps a few buffers, each at most [`MAX_KEPT_BYTES`]; what does
//! not fit is freed as before. Kept buffers are memory outside the queue
//! budgets, so the pools are small: [`KEPT`] buffers each.

use std::sync::{Mutex, PoisonError};

/// Buffers a pool keeps at most: enough for the chunks and batches of a few
/// sources with their chunks in decode (two waiting for the fan-out, one
/// held by it, one being read), no more. Fewer (4) saved memory but
/// doubled the pipe's page faults (BENCHMARKS.md, "Session 11").
pub(crate) const KEPT: usize = 8;

/// Largest buffer a pool keeps. Read chunks are 320 KiB and batches a
/// little more; a buffer grown by one huge line is freed, not kept.
pub(crate) const MAX_KEPT_BYTES: usize = 2 * 1024 * 1024;

/// A bounded stack of spare buffers, shared by every thread.
#[derive(Debug)]
pub(crate) struct Pool<T> {
    spare: Mutex<Vec<T>>,
}

/// A buffer a [`Pool`] can keep.
pub(crate) trait Spare {
    /// Its capacity in bytes.
    fn capacity_bytes(&self) -> usize;
    /// Empties it, keeping its capacity.
    fn empty(&mut self);
}

impl Spare for Vec<u8> {
    fn capacity_bytes(&self) -> usize {
        self.capacity()
    }
    fn empty(&mut self) {
        self.clear();
    }
}

impl Spare for bytes::BytesMut {
    fn capacity_bytes(&self) -> usize {
        self.capacity()
    }
    fn empty(&mut self) {
        self.clear();
    }
}

impl<T: Spare> Pool<T> {
    /// An empty pool.
    pub(crate) const fn new() -> Pool<T> {
        Pool {
            spare: Mutex::new(Vec::new()),
        }
    }

    /// A spare buffer with room for at least `bytes`, if one is kept.
    pub(crate) fn take(&self, bytes: usize) -> Option<T> {
        let mut spare = self.spare.lock().unwrap_or_else(PoisonError::into_inner);
        let i = spare.iter().rposition(|b| b.capacity_bytes() >= bytes)?;
        Some(spare.swap_remove(i))
    }

    /// Keeps `buf` for a later [`Pool::take`], or frees it when the pool is
    /// full or the buffer too large.
    pub(crate) fn give(&self, mut buf: T) {
        let cap = buf.capacity_bytes();
        if cap == 0 || cap > MAX_KEPT_BYTES {
            return;
        }
        buf.empty();
        let mut spare = self.spare.lock().unwrap_or_else(PoisonError::into_inner);
        if spare.len() < KEPT {
            spare.push(buf);
        }
    }
}

impl<T: Spare> Default for Pool<T> {
    fn default() -> Self {
        Pool::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_buffer_comes_back_empty_with_its_capacity() {
        let pool = Pool::<Vec<u8>>::new();
        assert!(pool.take(10).is_none());
        let mut v = Vec::with_capacity(1000);
        v.extend_from_slice(b"abc");
        let ptr = v.as_ptr();
        pool.give(v);
        assert!(pool.take(2000).is_none(), "too small for 2000 bytes");
        let back = pool.take(500).unwrap();
        assert!(back.is_empty() && back.capacity() >= 1000 && back.as_ptr() == ptr);
    }

    #[test]
    fn the_pool_keeps_a_bounded_number_of_bounded_buffers() {
        let pool = Pool::<Vec<u8>>::new();
        pool.give(Vec::with_capacity(MAX_KEPT_BYTES + 1));
        assert!(pool.take(0).is_none(), "an oversized buffer is freed");
        for _ in 0..KEPT + 5 {
            pool.give(Vec::with_capacity(64));
        }
        let mut n = 0;
        while pool.take(1).is_some() {
            n += 1;
        }
        assert_eq!(n, KEPT);
    }
}
