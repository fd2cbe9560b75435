//! ApiVersions: the apis and versions this broker speaks, and the limits it enforces.
//!
//! Any version of ApiVersions is answered (with a version-0 response) so a client can always negotiate: a version
//! the broker does not know gets `UNSUPPORTED_VERSION` with everything else still filled in (see
//! [`unsupported_version`], which the connection calls before decoding the body).

use ferry_protocol::ErrorCode;
use ferry_protocol::limits::BATCH_RECORDS_MAX;
use ferry_protocol::messages::{
    ApiVersionsRequest, ApiVersionsResponse, BrokerLimits, error_code_to_wire, supported_api_versions,
};

use crate::config::{Config, millis};
use crate::server::ServerState;

/// Answers an ApiVersions request.
pub(crate) fn handle(state: &ServerState, request: &ApiVersionsRequest) -> ApiVersionsResponse {
    tracing::debug!(
        client = %request.client_software_name.escape_debug(),
        version = %request.client_software_version.escape_debug(),
        "version negotiation"
    );
    response(&state.config, ErrorCode::None)
}

/// The answer to an ApiVersions request of a version this broker does not speak.
pub(crate) fn unsupported_version(state: &ServerState) -> ApiVersionsResponse {
    response(&state.config, ErrorCode::UnsupportedVersion)
}

fn response(config: &Config, code: ErrorCode) -> ApiVersionsResponse {
    ApiVersionsResponse {
        error_code: error_code_to_wire(code),
        api_versions: supported_api_versions(),
        limits: Some(limits(config)),
        broker_software_version: env!("CARGO_PKG_VERSION").to_owned(),
    }
}

/// The limits this broker enforces, as announced to clients.
pub(crate) fn limits(config: &Config) -> BrokerLimits {
    BrokerLimits {
        frame_bytes_max: config.server.frame_bytes_max,
        batch_bytes_max: config.log.batch_bytes_max,
        batch_records_max: BATCH_RECORDS_MAX,
        fetch_bytes_max: config.server.fetch_bytes_max,
        fetch_wait_ms_max: u32::try_from(millis(config.server.fetch_wait_max)).unwrap_or(u32::MAX),
        in_flight_requests_max: config.server.in_flight_requests_max,
        partitions_per_topic_max: config.server.partitions_per_topic_max,
    }
}
