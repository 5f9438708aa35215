//! The `chorus` binary.

/// mimalloc instead of the system allocator: the broker allocates and frees many small buffers
/// per message (frames, records, B-tree pages), where glibc's malloc spent a tenth of the CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    without_huge_pages();
    chorus::main()
}

/// Turns transparent huge pages off for this process. mimalloc asks for them on its arenas, and
/// the kernel then zeroes 2 MiB at the first touch of each: under one-message publishes the
/// leader spent 12% of its CPU in `clear_page_erms`, its p99 ack latency was 31 ms instead of 12,
/// and its RSS peak 110 MiB instead of 80 (BENCHMARKS.md, "Huge pages"). Best effort: a kernel
/// that refuses leaves the process as it was.
fn without_huge_pages() {
    let _ = rustix::thread::disable_transparent_huge_pages(true);
}
