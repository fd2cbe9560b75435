//! Ferry's wire and disk formats.
//!
//! This crate is pure: it does no I/O, starts no runtime and touches no files, so the broker, the client and
//! the fuzzers share one definition of every byte.
//!
//! Modules, in reading order:
//! - [`limits`]: every size limit of the formats, as named constants.
//! - [`error`]: [`ProtocolError`] (bytes that do not decode) and [`ErrorCode`] (the stable wire error table).
//! - [`batch`]: the record batch, shared by the wire and the partition log: builder, zero-copy reader, rebase.
//! - [`frame`]: the frame: a length prefix, a fixed header, a protobuf body; sans-IO decode and encode.
//! - [`codec`]: [`FrameCodec`], a thin tokio-util `Decoder`/`Encoder` over [`frame`].
//! - [`messages`]: the request and response messages (compiled from `proto/*.proto`), [`Request`], [`Response`],
//!   and validated types such as [`TopicName`].

pub mod batch;
pub mod codec;
pub mod error;
pub mod frame;
#[doc(hidden)]
pub mod fuzz;
pub mod limits;
pub mod messages;

pub use batch::{BatchBuilder, BatchHeader, NewRecord, Record, RecordBatch};
pub use codec::FrameCodec;
pub use error::{ErrorCode, ProtocolError};
pub use frame::{ApiKey, Frame, FrameFlags, FrameHeader};
pub use messages::{Request, Response, TopicName};
