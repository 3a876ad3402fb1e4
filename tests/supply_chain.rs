//! `cargo deny check bans licenses sources` over the whole workspace (see deny.toml): no OpenSSL or
//! second crypto stack, only permissive licenses, only crates.io. `cargo-deny` is installed from
//! crates.io when missing. Advisories need GitHub's RustSec database: checked by hand (deny.toml).

#[test]
fn the_dependency_graph_passes_cargo_deny() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = zeroci_testkit::cargo_tool("deny", "cargo-deny", "0.20.2")
        .args(["--manifest-path"])
        .arg(root.join("Cargo.toml"))
        .args(["--workspace", "check", "bans", "licenses", "sources"])
        .output()
        .expect("run cargo deny");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "cargo deny check failed:\n{stderr}");
}
