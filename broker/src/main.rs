//! The `chorus` binary.

fn main() {
    println!("chorus {}", env!("CARGO_PKG_VERSION"));
}
