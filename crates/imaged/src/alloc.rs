//! The memory allocator of the programs built on this crate: jemalloc, with
//! the options imaged was measured with. A library does not choose a
//! program's allocator, so each binary sets it with
//! [`global_allocator!`](crate::global_allocator): the daemon, and the
//! benchmark's null and sled-only servers and its client, which are measured
//! against it and so must allocate the same way, as must the criterion
//! micro-benchmarks of the store's hot paths. Why jemalloc, and why these
//! options: docs/PERFORMANCE.md.

/// The allocator.
pub use tikv_jemallocator::Jemalloc;

/// jemalloc's options, which it reads when it starts (`_RJEM_MALLOC_CONF` in
/// the environment is applied after them):
/// - `narenas:2`: two arenas, where jemalloc's default is four per core.
/// - `background_thread:true`: jemalloc's own threads return unused pages to
///   the kernel on a timer, so an idle daemon gives memory back without an
///   allocation to trigger it.
/// - `dirty_decay_ms:1000,muzzy_decay_ms:0`: freed pages go back about a
///   second after they are freed, with no lazy second stage, so memory freed
///   by a large answer or a reopen of sled leaves RSS soon after.
pub const MALLOC_CONF: MallocConf =
    MallocConf(c"narenas:2,background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0".as_ptr());

/// A C string pointer, as jemalloc declares its `malloc_conf`.
#[repr(transparent)]
pub struct MallocConf(*const std::ffi::c_char);

// SAFETY: the pointer is to a string literal, immutable for the whole run.
unsafe impl Sync for MallocConf {}

/// Makes jemalloc, with [`MALLOC_CONF`], the program's global allocator.
/// Use it once, at the top level of a binary's root module.
#[macro_export]
macro_rules! global_allocator {
    () => {
        #[global_allocator]
        static ALLOCATOR: $crate::alloc::Jemalloc = $crate::alloc::Jemalloc;

        /// jemalloc reads its options from this symbol when it starts.
        #[unsafe(export_name = "_rjem_malloc_conf")]
        static MALLOC_CONF: $crate::alloc::MallocConf = $crate::alloc::MALLOC_CONF;
    };
}
