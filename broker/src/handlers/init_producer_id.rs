//! InitProducerId: issues an idempotent producer's id and epoch (see `crate::producers` and `proto/producer.proto`).

use std::sync::Arc;

use ferry_log::producers::BATCHES_RETAINED;
use ferry_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse};

use super::{HandlerError, item_error};
use crate::config::millis;
use crate::metrics::PRODUCER_IDS_ACTIVE;
use crate::server::ServerState;

/// Answers an InitProducerId request; the id is written to the metadata store (synced) before it is returned.
pub(crate) async fn handle(state: &ServerState, _request: InitProducerIdRequest) -> InitProducerIdResponse {
    let producer_ids = Arc::clone(&state.producer_ids);
    let issued = tokio::task::spawn_blocking(move || producer_ids.issue(super::now_ms()))
        .await
        .unwrap_or_else(|error| std::panic::resume_unwind(error.into_panic()));
    match issued {
        Ok(issued) => {
            tracing::debug!(producer_id = issued.producer_id, "producer id issued");
            metrics::gauge!(PRODUCER_IDS_ACTIVE).set(state.producer_ids.active() as f64);
            InitProducerIdResponse {
                error_code: 0,
                error_message: String::new(),
                producer_id: issued.producer_id,
                producer_epoch: issued.epoch,
                producer_id_expiration_ms: millis(state.producer_ids.expiration()),
                batches_retained: u32::try_from(BATCHES_RETAINED).unwrap_or(u32::MAX),
            }
        }
        Err(error) => {
            let (error_code, error_message) = item_error(&HandlerError::from(error));
            InitProducerIdResponse {
                error_code,
                error_message,
                producer_id: -1,
                producer_epoch: -1,
                ..InitProducerIdResponse::default()
            }
        }
    }
}
