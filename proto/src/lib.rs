//! convoy's gRPC protocol, generated from `proto/convoy/v1/*.proto` by tonic.
//!
//! These types stay at the edges: the coordinator and worker convert them to their domain
//! types as soon as a request arrives, so protobuf's optional-everything shapes never reach
//! the state machine. Field numbers are append-only (see the comments in the .proto files).

pub mod v1 {
    tonic::include_proto!("convoy.v1");
}
