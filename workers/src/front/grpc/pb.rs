//! Generated code: `ol.Lambda` (server and client) and a
//! `helloworld.Greeter` client for tests and the load driver (build.rs).

pub mod ol {
    tonic::include_proto!("ol");
}
pub mod helloworld {
    tonic::include_proto!("helloworld");
}
