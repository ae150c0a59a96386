//! The memory allocator of every program built on this crate: the daemon,
//! and the benchmark's null and sled-only servers and its client, which are
//! measured against it and so must allocate the same way, as must the
//! criterion micro-benchmarks of the store's hot paths.
//!
//! It is jemalloc rather than glibc's malloc. Measured in the side-by-side
//! comparison at 100,000 images (two runs of three rounds each, alternated
//! with two of glibc's, with only the daemon's allocator changed): RSS after
//! the fill 115–120 MiB against 126–128, a stream of everything 148–153 ms
//! against 179–196, the fill's last tenth at 62–64% of its first against
//! 51–58%, Gets spread over the store 30–31k/s against 27–29k/s, and writes
//! no slower. mimalloc was faster still but held 1.7–2× glibc's RSS (see
//! the README's Performance section).

/// The allocator.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, which it reads when it starts (`_RJEM_MALLOC_CONF` in
/// the environment is applied after them), measured together as above:
/// - `narenas:2`: two arenas, where jemalloc's default is four per core.
/// - `background_thread:true`: jemalloc's own threads return unused pages to
///   the kernel on a timer, so an idle daemon gives memory back without an
///   allocation to trigger it.
/// - `dirty_decay_ms:1000,muzzy_decay_ms:0`: freed pages go back about a
///   second after they are freed, with no lazy second stage, so memory freed
///   by a large answer or a reopen of sled leaves RSS soon after.
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: MallocConf =
    MallocConf(c"narenas:2,background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0".as_ptr());

/// A C string pointer, as jemalloc declares its `malloc_conf`.
#[repr(transparent)]
struct MallocConf(*const std::ffi::c_char);

// SAFETY: the pointer is to a string literal, immutable for the whole run.
unsafe impl Sync for MallocConf {}
