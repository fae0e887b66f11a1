//! A counting global allocator: the system allocator plus two relaxed atomic counters
//! (allocations, bytes asked for). Installed by the `corecast` binary only with the
//! `count-alloc` cargo feature (the metrics then export `corecast_heap_allocations_total`),
//! and by `benches/hot_allocs.rs`, so allocations per delivery are counted exactly rather
//! than inferred from RSS.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static ALLOCATED_BYTES: AtomicU64 = AtomicU64::new(0);
static DELIVERY_ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Inside a [`DeliveryScope`] on this thread.
    static IN_DELIVERY: Cell<bool> = const { Cell::new(false) };
}

/// Counts one allocation, and one on the delivery path when inside a [`DeliveryScope`].
fn counted(size: usize) {
    ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    ALLOCATED_BYTES.fetch_add(size as u64, Ordering::Relaxed);
    if IN_DELIVERY.try_with(Cell::get).unwrap_or(false) {
        DELIVERY_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

/// While alive, this thread's allocations are also counted as the delivery path's
/// ([`delivery_allocations`]): a shard holds one while it queues a frame on its
/// subscribers and while it flushes their sockets.
pub struct DeliveryScope(bool);

/// Opens a [`DeliveryScope`] (scopes nest).
#[must_use]
pub fn delivery_scope() -> DeliveryScope {
    DeliveryScope(IN_DELIVERY.with(|f| f.replace(true)))
}

impl Drop for DeliveryScope {
    fn drop(&mut self) {
        IN_DELIVERY.with(|f| f.set(self.0));
    }
}

/// Allocations made inside a [`DeliveryScope`] so far, on any thread.
#[must_use]
pub fn delivery_allocations() -> u64 {
    DELIVERY_ALLOCATIONS.load(Ordering::Relaxed)
}

/// The system allocator, counting every `alloc` and `realloc`.
pub struct Counting;

// SAFETY: every call is forwarded unchanged to `System`; the counters have no effect on
// the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        counted(layout.size());
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        counted(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through this allocator with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        counted(new_size);
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Allocations (and reallocations) so far in this process; 0 unless [`Counting`] is the
/// global allocator.
#[must_use]
pub fn allocations() -> u64 {
    ALLOCATIONS.load(Ordering::Relaxed)
}

/// Bytes asked for by those allocations.
#[must_use]
pub fn allocated_bytes() -> u64 {
    ALLOCATED_BYTES.load(Ordering::Relaxed)
}
