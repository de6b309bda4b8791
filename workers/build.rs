//! Generates the tonic/prost code for `ol.Lambda` (server and client) and a
//! `helloworld.Greeter` client (tests and the load driver). The protos are
//! compiled with protox, so no `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let greeter = "../examples/functions/greeter";
    for p in ["proto/ol/lambda.proto", &format!("{greeter}/greeter.proto")] {
        println!("cargo:rerun-if-changed={p}");
    }
    let lambda = protox::compile(["ol/lambda.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(lambda)?;
    let hello = protox::compile(["greeter.proto"], [greeter])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_fds(hello)?;
    Ok(())
}
