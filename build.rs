//! Compiles `proto/zeroci/v1/*.proto` with protox (pure Rust, no system `protoc`).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "zeroci/v1/agent.proto",
        "zeroci/v1/control.proto",
        "zeroci/v1/pool.proto",
    ];
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Output bytes are passed around without copying.
        .bytes(".zeroci.v1")
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
