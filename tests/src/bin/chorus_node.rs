//! The `chorus` broker binary, built inside the test package for the cluster tests.

fn main() -> std::process::ExitCode {
    chorus::main()
}
