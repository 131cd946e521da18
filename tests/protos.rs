//! The generated protobuf and gRPC code in `src/pb/` is checked in, so that
//! a build compiles no proto compiler. This test compiles `proto/` again,
//! with protox (pure Rust: no system `protoc`) and tonic-prost-build, and
//! fails if the code or the descriptors served by gRPC reflection differ.
//!
//! After a change to a `.proto`:
//! `CONSENTD_UPDATE_PROTOS=1 cargo test --test protos` rewrites them.

use std::path::Path;

use prost::Message;

#[test]
fn the_checked_in_generated_code_is_what_the_protos_give() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fds = protox::compile(
        [root.join("proto/consent/v1/consent.proto")],
        [root.join("proto")],
    )
    .expect("proto/ compiles");
    let out = tempfile::tempdir().expect("a temp dir");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .out_dir(out.path())
        .compile_fds(fds.clone())
        .expect("code generated");
    let generated = [
        (
            "consent.v1.rs",
            std::fs::read(out.path().join("consent.v1.rs")).expect("the generated module"),
        ),
        ("consent_descriptor.bin", fds.encode_to_vec()),
    ];
    let update = std::env::var_os("CONSENTD_UPDATE_PROTOS").is_some();
    let mut stale = Vec::new();
    for (name, fresh) in generated {
        let path = root.join("src/pb").join(name);
        if std::fs::read(&path).ok().as_deref() == Some(fresh.as_slice()) {
            continue;
        }
        if update {
            std::fs::write(&path, &fresh).expect("src/pb/ written");
        } else {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "{} differ from what proto/ gives: run `CONSENTD_UPDATE_PROTOS=1 cargo test --test protos` and commit them",
        stale.join(" and ")
    );
}
