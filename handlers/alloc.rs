//! The process's allocator: the system's (glibc) until a command asks for mimalloc.
//!
//! The commands that run many threads switch. `replay` and `policy diff` read, decide and write on three
//! threads, passing millions of small strings from one to the next; glibc frees each of them into the arena
//! of the thread that allocated it, under that arena's lock, and replay ran 2–3× slower on it than on
//! mimalloc. `serve` and `local` hand every request between tokio's threads and the SQLite writer thread the
//! same way: on mimalloc the runtime benchmark's relay served ~20% more requests a second (three
//! interleaved pairs: 8,841/8,442/8,078 against 7,186/7,435/6,120), with the tokio workers' CPU per request
//! down from 54–66 to 38–44 µs and the writer's from 90–109 to 79–89 µs. It costs ~0.5 MiB of resident
//! memory at idle (anonymous 0.7 → 1.2 MiB), which the 10 MiB target affords (6.8 MiB VmRSS, dist build).
//! The short commands stay on glibc.
//!
//! After the switch new blocks come from mimalloc; every block is freed or grown by the allocator that owns
//! it (`mi_is_in_heap_region`), so blocks allocated before the switch stay valid.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, Ordering};

use mimalloc::MiMalloc;

/// A global allocator that serves from [`System`] until [`Switchable::use_mimalloc`], and from mimalloc after.
pub struct Switchable {
    mimalloc: AtomicBool,
}

impl Switchable {
    /// Serving from the system allocator.
    pub const fn new() -> Self {
        Switchable {
            mimalloc: AtomicBool::new(false),
        }
    }

    /// New blocks come from mimalloc from now on. Call it before starting threads, for a whole command.
    pub fn use_mimalloc(&self) {
        self.mimalloc.store(true, Ordering::Release);
    }

    /// Whether new blocks come from mimalloc.
    pub fn is_mimalloc(&self) -> bool {
        self.mimalloc.load(Ordering::Acquire)
    }

    /// Whether mimalloc owns `ptr` (never, before the switch: the check is skipped then).
    fn owns(&self, ptr: *mut u8) -> bool {
        // SAFETY: a read-only lookup in mimalloc's region map, valid for any address.
        self.mimalloc.load(Ordering::Relaxed)
            && unsafe { libmimalloc_sys::mi_is_in_heap_region(ptr.cast()) }
    }
}

impl Default for Switchable {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: every block is allocated by exactly one of two sound allocators and returned to the one that owns it.
unsafe impl GlobalAlloc for Switchable {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe {
            if self.mimalloc.load(Ordering::Relaxed) {
                MiMalloc.alloc(layout)
            } else {
                System.alloc(layout)
            }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe {
            if self.mimalloc.load(Ordering::Relaxed) {
                MiMalloc.alloc_zeroed(layout)
            } else {
                System.alloc_zeroed(layout)
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, so from the one `owns` names.
        unsafe {
            if self.owns(ptr) {
                MiMalloc.dealloc(ptr, layout)
            } else {
                System.dealloc(ptr, layout)
            }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`; the block stays with the allocator that owns it.
        unsafe {
            if self.owns(ptr) {
                MiMalloc.realloc(ptr, layout, new_size)
            } else {
                System.realloc(ptr, layout, new_size)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(ptr: *mut u8, len: usize, byte: u8) {
        // SAFETY: `ptr` points to at least `len` writable bytes.
        unsafe { std::ptr::write_bytes(ptr, byte, len) }
    }

    fn all(ptr: *mut u8, len: usize, byte: u8) -> bool {
        // SAFETY: `ptr` points to at least `len` initialised bytes.
        unsafe {
            std::slice::from_raw_parts(ptr, len)
                .iter()
                .all(|b| *b == byte)
        }
    }

    #[test]
    fn blocks_from_before_the_switch_are_freed_and_grown_by_their_own_allocator() {
        let a = Switchable::new();
        let small = Layout::from_size_align(24, 8).unwrap();
        let big = Layout::from_size_align(3 << 20, 64).unwrap();
        // SAFETY: layouts are non-zero; every block is written within its size and freed once.
        unsafe {
            let before = a.alloc(small);
            let before_big = a.alloc_zeroed(big);
            assert!(!before.is_null() && !before_big.is_null());
            assert!(!libmimalloc_sys::mi_is_in_heap_region(before.cast()));
            fill(before, 24, 7);
            assert!(all(before_big, big.size(), 0));

            a.use_mimalloc();
            assert!(a.is_mimalloc());
            let after = a.alloc(small);
            assert!(libmimalloc_sys::mi_is_in_heap_region(after.cast()));
            assert!(!a.owns(before));
            assert!(a.owns(after));

            // Growing a system block keeps it with the system allocator, contents intact.
            let grown = a.realloc(before, small, 4096);
            assert!(!a.owns(grown));
            assert!(all(grown, 24, 7));
            fill(after, 24, 9);
            let grown_after = a.realloc(after, small, 1 << 20);
            assert!(a.owns(grown_after));
            assert!(all(grown_after, 24, 9));

            a.dealloc(grown, Layout::from_size_align(4096, 8).unwrap());
            a.dealloc(grown_after, Layout::from_size_align(1 << 20, 8).unwrap());
            a.dealloc(before_big, big);
            let zeroed = a.alloc_zeroed(big);
            assert!(a.owns(zeroed) && all(zeroed, big.size(), 0));
            a.dealloc(zeroed, big);
        }
    }

    #[test]
    fn collections_survive_the_switch() {
        // Through a real allocator instance, as Vec and String would use it.
        let a = Switchable::new();
        let layout = Layout::array::<u64>(1000).unwrap();
        // SAFETY: as above.
        unsafe {
            let blocks: Vec<*mut u8> = (0..100).map(|_| a.alloc(layout)).collect();
            a.use_mimalloc();
            let more: Vec<*mut u8> = (0..100).map(|_| a.alloc(layout)).collect();
            for p in blocks.into_iter().chain(more) {
                a.dealloc(p, layout);
            }
        }
    }
}
