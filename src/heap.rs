//! The process's memory: transparent huge pages are turned off at start
//! ([`disable_transparent_huge_pages`]), and live-heap accounting for measurements (feature
//! `heap-stats`): a global-allocator wrapper that counts bytes currently allocated, exported at
//! `/metrics` as `callsignal_heap_live_bytes`. Off by default: it adds an atomic add to every
//! allocation.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Whether the environment asks to keep transparent huge pages: `MIMALLOC_ALLOW_THP` set to
/// `1`, `on`, `yes` or `true` (any case). mimalloc's own option of that name defaults to
/// allowing them (unset or empty); callsignal defaults to not, so only an explicit yes counts.
pub fn thp_requested(value: Option<&str>) -> bool {
    value.is_some_and(|v| {
        let v = v.trim().to_ascii_lowercase();
        matches!(v.as_str(), "1" | "on" | "yes" | "true")
    })
}

/// Turns transparent huge pages (THP) off for this process and the programs it starts
/// (`prctl(PR_SET_THP_DISABLE, 1)`; since Linux 4.13 it covers regions already mapped, such as
/// the arena mimalloc reserved before `main`), unless `MIMALLOC_ALLOW_THP` asks to keep
/// them ([`thp_requested`]). Call it first thing in `main`, before the runtime allocates.
///
/// Why: mimalloc marked its arenas `MADV_HUGEPAGE`, so where the kernel's THP mode is
/// `madvise` (Debian's default) or `always`, the first touch of each 2 MiB of fresh heap cleared
/// a whole huge page (and may compact memory first, `defrag=madvise`) while the socket tasks
/// waited: milliseconds of stall when a burst of SDP grows the held messages. A signaling
/// server's heap is small and its latency matters more than TLB reach. mimalloc is built with
/// its `no_thp` feature (it no longer asks for huge pages, not even for the arena it reserves
/// before `main`), and this call keeps the kernel's `always` mode from giving them anyway, to
/// any allocation of the process (SQLite's own, thread stacks). Measured in
/// docs/benchmarks.md (session 8).
///
/// Returns whether THP is off now; on another OS, or if the kernel refuses, `false` and
/// nothing changed (the server runs as before).
pub fn disable_transparent_huge_pages() -> bool {
    if thp_requested(std::env::var("MIMALLOC_ALLOW_THP").ok().as_deref()) {
        return false;
    }
    #[cfg(target_os = "linux")]
    {
        rustix::thread::disable_transparent_huge_pages(true).is_ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

static LIVE: AtomicUsize = AtomicUsize::new(0);

/// Bytes currently allocated through [`Counting`] (0 when it is not the global allocator).
pub fn live_bytes() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// Wraps an allocator and counts live bytes.
pub struct Counting<A>(pub A);

// SAFETY: every method forwards to the wrapped allocator unchanged; only a counter is added.
#[allow(unsafe_code)]
unsafe impl<A: GlobalAlloc> GlobalAlloc for Counting<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { self.0.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { self.0.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { self.0.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { self.0.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            LIVE.fetch_add(new_size, Ordering::Relaxed);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::thp_requested;

    #[test]
    fn only_an_explicit_yes_keeps_transparent_huge_pages() {
        for yes in ["1", "on", "YES", " true "] {
            assert!(thp_requested(Some(yes)), "{yes:?}");
        }
        for no in [
            None,
            Some(""),
            Some("0"),
            Some("off"),
            Some("no"),
            Some("2"),
        ] {
            assert!(!thp_requested(no), "{no:?}");
        }
    }
}
