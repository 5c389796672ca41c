//! Wire types of the fedmark protocol, generated from `proto/fedmark.proto`.
//!
//! Only types live here: what the messages mean and how they are validated is the business of
//! `fedmark-core` (the protocol logic) and of the coordinator and client crates (the I/O glue).
//! The crate also holds what both sides share at the boundary: [`durable`], the one atomic
//! file replace.

#![allow(missing_docs)]
#![allow(clippy::large_enum_variant)]

/// Version 2 of the protocol: the `Coordinator` (partner) and `Admin` services and their
/// messages.
pub mod v1 {
    tonic::include_proto!("fedmark.v1");
}

pub use v1::*;

pub mod durable;

/// Shared byte buffers of the generated messages.
pub use bytes::Bytes;

/// The request metadata that binds a bulk stream (`DownloadModel`, `UploadInput`) to its
/// session: the hex of the `Welcome`'s session token.
pub const SESSION_METADATA: &str = "fedmark-session";

/// The protocol version a client announces in its `Hello`; the coordinator refuses others.
pub const PROTOCOL_VERSION: u32 = 3;
