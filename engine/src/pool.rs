//! Reusable chunk buffers: a chunk is read (sender) or received (gateway) into a buffer
//! taken from a pool, handed on as `Bytes` without a copy ([`Bytes::from_owner`]), and the
//! buffer goes back to the pool when the last `Bytes` of it is dropped (quinn has the data
//! acknowledged, the connectors have written it).
//!
//! Without it every chunk was a fresh multi-MiB allocation: the kernel faulted in and
//! zeroed new pages for each (8 to 12 % of either side's CPU on loopback, BENCHMARKS.md).
//! A buffer is zeroed once, when it is first made; a buffer taken again keeps the bytes of
//! its last use until they are overwritten, which is why [`PooledBuf`] is only ever filled
//! completely before it is read (`read_exact_at`, a receive loop that checks the length).
//!
//! Every buffer starts at a multiple of [`ALIGN`], so that a destination may write it with
//! `O_DIRECT` (the local-disk connector does, past the page cache).
//!
//! The pool keeps buffers by size class (powers of two, at least [`MIN_CLASS`]) and at
//! most [`BufferPool::max_idle_bytes`] of them idle: in-flight buffers belong to their
//! chunks, not to the pool, and a pool never holds more than that cap beyond what is in
//! flight.

use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;

/// Smallest size class (smaller chunks take a buffer of this size).
pub const MIN_CLASS: usize = 4 << 10;

/// Buffers larger than this are not pooled (allocated and freed as usual).
pub const MAX_POOLED: usize = 64 << 20;

/// Idle bytes the process-wide pool keeps by default (eight 4 MiB chunks).
pub const DEFAULT_MAX_IDLE: usize = 32 << 20;

/// Alignment of every pooled buffer's start: what the local-disk connector needs to write
/// it with `O_DIRECT` (the page size).
pub const ALIGN: usize = trackshift_connectors::DIRECT_ALIGN;

/// Gauge: bytes of buffers idle in the pools (the process-wide one in practice).
pub const IDLE_METRIC: &str = "trackshift_buffer_pool_idle_bytes";
/// Counter: buffers made because none of the size was idle (steadily rising during a
/// transfer: the pool keeps too few; flat: every chunk reuses a buffer).
pub const MADE_METRIC: &str = "trackshift_buffer_pool_made_total";

/// Number of size classes: `MIN_CLASS << k` for `k < CLASSES` covers up to `MAX_POOLED`.
const CLASSES: usize = (MAX_POOLED / MIN_CLASS).trailing_zeros() as usize + 1;

/// A pool of chunk buffers (cheap to clone: one shared pool).
#[derive(Clone)]
pub struct BufferPool {
    inner: Arc<Inner>,
}

struct Inner {
    max_idle: usize,
    idle: Mutex<Idle>,
}

struct Idle {
    bytes: usize,
    classes: [Vec<Vec<u8>>; CLASSES],
    /// Buffers made because none was idle (for tests and metrics).
    made: u64,
}

impl std::fmt::Debug for BufferPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufferPool")
            .field("max_idle", &self.inner.max_idle)
            .field("idle_bytes", &self.idle_bytes())
            .finish()
    }
}

impl BufferPool {
    /// A pool keeping at most `max_idle` bytes of buffers nobody uses.
    pub fn new(max_idle: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                max_idle,
                idle: Mutex::new(Idle {
                    bytes: 0,
                    classes: std::array::from_fn(|_| Vec::new()),
                    made: 0,
                }),
            }),
        }
    }

    /// The process-wide pool (sender and gateway share it in one process).
    pub fn global() -> &'static BufferPool {
        static POOL: OnceLock<BufferPool> = OnceLock::new();
        POOL.get_or_init(|| BufferPool::new(DEFAULT_MAX_IDLE))
    }

    /// A buffer of exactly `len` bytes. Its contents are unspecified (zeros or an earlier
    /// chunk's bytes): the caller overwrites all of it before reading any.
    pub fn take(&self, len: usize) -> PooledBuf {
        let Some(class) = class_of(len) else {
            return PooledBuf {
                buf: vec![0u8; len],
                start: 0,
                len,
                class: 0,
                pool: None,
            };
        };
        let (reused, idle_now) = {
            let mut idle = self.inner.idle.lock().expect("pool lock");
            let got = idle.classes[class].pop();
            match &got {
                Some(_) => idle.bytes -= MIN_CLASS << class,
                None => idle.made += 1,
            }
            (got, idle.bytes)
        };
        if reused.is_none() {
            metrics::counter!(MADE_METRIC).increment(1);
        }
        metrics::gauge!(IDLE_METRIC).set(idle_now as f64);
        // One page more than the class, to start the buffer on a page boundary.
        let buf = reused.unwrap_or_else(|| vec![0u8; (MIN_CLASS << class) + ALIGN]);
        let start = buf.as_ptr().align_offset(ALIGN);
        PooledBuf {
            buf,
            start,
            len,
            class,
            pool: Some(self.inner.clone()),
        }
    }

    /// Bytes of buffers idle in the pool now.
    pub fn idle_bytes(&self) -> usize {
        self.inner.idle.lock().expect("pool lock").bytes
    }

    /// How many buffers the pool has made because none of the size was idle.
    pub fn made(&self) -> u64 {
        self.inner.idle.lock().expect("pool lock").made
    }

    /// The most idle bytes this pool keeps.
    pub fn max_idle_bytes(&self) -> usize {
        self.inner.max_idle
    }
}

/// The size class of a `len`-byte buffer, or `None` if it is not pooled.
fn class_of(len: usize) -> Option<usize> {
    if len > MAX_POOLED {
        return None;
    }
    let size = len.max(MIN_CLASS).next_power_of_two();
    Some((size / MIN_CLASS).trailing_zeros() as usize)
}

/// A buffer from a [`BufferPool`], `len` bytes long; back to the pool when dropped.
pub struct PooledBuf {
    buf: Vec<u8>,
    /// Where the aligned buffer starts in `buf`.
    start: usize,
    len: usize,
    class: usize,
    pool: Option<Arc<Inner>>,
}

impl PooledBuf {
    /// The buffer, to fill.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.len]
    }

    /// Shares the buffer as `Bytes` without copying; it returns to the pool when the last
    /// clone (or slice) of them is dropped.
    pub fn freeze(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for PooledBuf {
    fn as_ref(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }
}

impl std::fmt::Debug for PooledBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledBuf").field("len", &self.len).finish()
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        let Some(pool) = self.pool.take() else { return };
        let buf = std::mem::take(&mut self.buf);
        let size = MIN_CLASS << self.class;
        let idle_now = {
            let mut idle = pool.idle.lock().expect("pool lock");
            if idle.bytes + size <= pool.max_idle {
                idle.bytes += size;
                idle.classes[self.class].push(buf);
            }
            idle.bytes
        };
        metrics::gauge!(IDLE_METRIC).set(idle_now as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_returned_buffer_is_taken_again_without_a_new_allocation() {
        let pool = BufferPool::new(16 << 20);
        let mut b = pool.take(3 << 20);
        assert_eq!(b.as_mut_slice().len(), 3 << 20);
        b.as_mut_slice()[0] = 7;
        let ptr = b.as_ref().as_ptr();
        assert_eq!(ptr as usize % ALIGN, 0, "page aligned");
        let bytes = b.freeze();
        let slice = bytes.slice(1..10);
        drop(bytes);
        assert_eq!(pool.idle_bytes(), 0, "a slice still holds the buffer");
        drop(slice);
        assert_eq!(pool.idle_bytes(), 4 << 20, "rounded up to its class");
        let again = pool.take((3 << 20) + 5);
        assert_eq!(again.as_ref().as_ptr(), ptr);
        assert_eq!(again.as_ref().len(), (3 << 20) + 5);
        assert_eq!(pool.made(), 1);
        assert_eq!(pool.idle_bytes(), 0);
    }

    #[test]
    fn idle_buffers_stay_within_the_cap() {
        let pool = BufferPool::new(8 << 20);
        let held: Vec<_> = (0..5).map(|_| pool.take(4 << 20)).collect();
        drop(held);
        assert_eq!(pool.idle_bytes(), 8 << 20, "two of five kept");
        assert_eq!(pool.made(), 5);
    }

    #[test]
    fn sizes_map_to_classes_and_huge_ones_are_not_pooled() {
        assert_eq!(class_of(0), Some(0));
        assert_eq!(class_of(MIN_CLASS), Some(0));
        assert_eq!(class_of(MIN_CLASS + 1), Some(1));
        assert_eq!(class_of(MAX_POOLED), Some(CLASSES - 1));
        assert_eq!(class_of(MAX_POOLED + 1), None);
        let pool = BufferPool::new(usize::MAX);
        drop(pool.take(MAX_POOLED + 1));
        assert_eq!(pool.idle_bytes(), 0);
        assert_eq!(pool.made(), 0);
        // Small buffers of different lengths share a class.
        drop(pool.take(10));
        let b = pool.take(MIN_CLASS);
        assert_eq!(pool.made(), 1);
        assert_eq!(b.as_ref().len(), MIN_CLASS);
    }
}
