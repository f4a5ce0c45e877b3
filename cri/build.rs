//! Generates the CRI v1 gRPC types, client and server from the vendored
//! `proto/api.proto` with protox (pure Rust), so building berth needs no
//! `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/api.proto");
    let fds = protox::compile(["proto/api.proto"], ["proto/"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // RPCs berth does not implement yet answer `Unimplemented` instead
        // of failing to compile; each issue replaces its stubs.
        .generate_default_stubs(true)
        // A request that does not decode is InvalidArgument, not Internal.
        .codec_path("crate::codec::CriCodec")
        // Messages serialize to JSON for the verbose status `info` (crictl
        // inspect's `.info.config`), with the proto field names as
        // containerd's Go structs have them. Bytes (env values) as text.
        .message_attribute(".", "#[derive(serde::Serialize)]")
        .field_attribute(
            ".runtime.v1.KeyValue.value",
            "#[serde(serialize_with = \"crate::util::lossy_text\")]",
        )
        .compile_fds(fds)?;
    Ok(())
}
