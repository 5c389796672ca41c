//! Wire types of the fedmark protocol, generated from `proto/fedmark.proto`.
//!
//! What the messages mean is the business of `fedmark-core` (the protocol logic) and of the
//! coordinator and client crates (the I/O glue). The crate also holds what both sides share at the boundary: [`convert`], every conversion
//! between these types and `fedmark-core`'s, the wire limits ([`MAX_MESSAGE_BYTES`]) and
//! [`durable`], the one atomic file replace. It depends on `fedmark-core`, never the reverse.

#![allow(missing_docs)]
#![allow(clippy::large_enum_variant)]

/// Version 2 of the protocol: the `Coordinator` (partner) and `Admin` services and their
/// messages.
pub mod v1 {
    tonic::include_proto!("fedmark.v1");
}

pub use v1::*;

pub mod convert;
pub mod durable;

/// Largest gRPC message either side sends or accepts (model and input chunks are 64 KiB).
pub const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;

/// Shared byte buffers of the generated messages.
pub use bytes::Bytes;

/// The request metadata that binds a bulk stream (`DownloadModel`, `UploadInput`) to its
/// session: the hex of the `Welcome`'s session token.
pub const SESSION_METADATA: &str = "fedmark-session";

/// The protocol version a client announces in its `Hello`; the coordinator refuses others.
pub const PROTOCOL_VERSION: u32 = 3;
