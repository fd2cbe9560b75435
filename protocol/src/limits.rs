//! Named limits of the wire and disk formats.
//!
//! Every limit says what happens when it is hit.
//! Brokers may configure smaller values (never larger ones); the broker reports the values it enforces
//! in the version-negotiation response so clients can size their batches.

/// Largest frame accepted from the wire, counted from the first header byte (the 4-byte length prefix excluded).
/// The length prefix is checked against it before any buffer space is reserved;
/// a larger frame is a decode error and the connection is closed.
pub const FRAME_BYTES_MAX: u32 = 8 * 1024 * 1024;

/// Room kept in a frame for the frame header and the request fields around the record batches.
pub const FRAME_OVERHEAD_BYTES_MAX: u32 = 64 * 1024;

/// Largest record batch, header included, on the wire and on disk.
/// A larger batch is rejected with `RECORD_BATCH_TOO_LARGE`; the connection stays open.
pub const BATCH_BYTES_MAX: u32 = FRAME_BYTES_MAX - FRAME_OVERHEAD_BYTES_MAX;

/// Most records one batch may hold. A batch claiming more is rejected as corrupt.
pub const BATCH_RECORDS_MAX: u32 = 1 << 20;

/// Most headers one record may carry. A record with more is rejected as corrupt,
/// so a tiny batch cannot make a reader iterate millions of empty headers.
pub const RECORD_HEADERS_MAX: u32 = 1024;

/// Longest record-header key, in bytes. A longer key is rejected as corrupt.
pub const RECORD_HEADER_KEY_BYTES_MAX: u32 = 4096;

/// Most partitions one topic may have. CreateTopics asking for more (or for 0) gets `INVALID_PARTITIONS`
/// for that topic; brokers may configure a lower maximum.
pub const PARTITIONS_PER_TOPIC_MAX: u32 = 1024;

/// Longest topic name, in bytes (names are ASCII). A longer name gets `INVALID_TOPIC`.
/// 249 leaves room for a partition suffix in a 255-byte file name, as in Kafka.
pub const TOPIC_NAME_BYTES_MAX: u32 = 249;

const _: () = assert!(BATCH_BYTES_MAX < FRAME_BYTES_MAX);
const _: () = assert!(FRAME_OVERHEAD_BYTES_MAX >= 4096);
// The smallest possible record is 7 bytes (see `batch`), so a maximal batch cannot hold more records than this.
const _: () = assert!(BATCH_RECORDS_MAX as u64 * 7 >= BATCH_BYTES_MAX as u64 / 8);
