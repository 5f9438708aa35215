//! The `chorus` binary.

fn main() -> std::process::ExitCode {
    chorus_broker::cli::main()
}
