//! The `chorus` binary.

/// mimalloc instead of the system allocator: the broker allocates and frees many small buffers
/// per message (frames, records, B-tree pages), where glibc's malloc spent a tenth of the CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    chorus::main()
}
