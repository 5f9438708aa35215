//! Compiles the schema with protox (a pure-Rust protobuf compiler), so no `protoc` is needed.

const PROTOS: [&str; 4] = [
    "proto/chorus/v1/common.proto",
    "proto/chorus/v1/client.proto",
    "proto/chorus/v1/log.proto",
    "proto/chorus/v1/peer.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    prost_build::Config::new()
        // Payloads decode as slices of the frame buffer, not copies.
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
