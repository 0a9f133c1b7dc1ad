//! Compiles every `.proto` under `trellis/` with protox (pure Rust, no protoc binary),
//! importing the annotations under `third_party/` (`google.api.http` for HTTP/JSON
//! transcoding, `buf.validate` for field rules), generates tonic clients and servers from
//! the result, and writes the encoded
//! `FileDescriptorSet` that the servers register for reflection; then compiles the
//! vendored etcd v3 API under `vendor/etcd/` to clients only, kept out of that set (the
//! services do not serve etcd's API).

use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let files = protos_under(&root, "trellis")?;

    // Source info and imports stay in the set: reflection clients need the imported
    // well-known types (Timestamp, FieldMask) to resolve our files.
    let third_party = root.join("third_party");
    protos_under(&root, "third_party")?;
    let mut compiler = protox::Compiler::new([root.clone(), third_party])?;
    compiler
        .include_source_info(true)
        .include_imports(true)
        .open_files(&files)?;
    // Encoded by protox itself: the custom options (`google.api.http`, `buf.validate`)
    // survive, where prost's `FileDescriptorSet` would drop them as unknown fields.
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("trellis_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    let fds = compiler.file_descriptor_set();

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // No `connect` constructor: it would clash with NotificationService.Connect, and
        // clients are built on platform channels anyway.
        .build_transport(false)
        .compile_fds(fds)?;

    compile_etcd(&root)
}

/// etcd's KV, Watch and Lease clients (packages `etcdserverpb`, `mvccpb`) for the
/// platform's etcd discovery backend: the `etcd-client` crate needs a protoc binary.
fn compile_etcd(root: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let files = protos_under(root, "vendor")?;
    let fds = protox::compile(&files, [root.join("vendor")])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}

/// Every `.proto` under `root/dir`, sorted; cargo reruns the build when one changes.
fn protos_under(root: &Path, dir: &str) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    collect_protos(&root.join(dir), &mut files)?;
    files.sort();
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    println!("cargo:rerun-if-changed={dir}");
    Ok(files)
}

fn collect_protos(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(&path, out)?;
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            out.push(path);
        }
    }
    Ok(())
}
