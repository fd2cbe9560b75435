//! InitProducerId: issues an idempotent producer's id and epoch (see `crate::producers` and `proto/producer.proto`).

use std::sync::Arc;

use ferry_log::producers::BATCHES_RETAINED;
use ferry_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse};

use super::{HandlerError, item_error};
use crate::config::millis;
use crate::metrics::PRODUCER_IDS_ACTIVE;
use crate::server::ServerState;

/// Answers an InitProducerId request; the id is written to the metadata store (synced) before it is returned.
/// With a transactional id, the transaction coordinator answers: the id's producer id with a new epoch.
pub(crate) async fn handle(state: &ServerState, request: InitProducerIdRequest) -> InitProducerIdResponse {
    if !request.transactional_id.is_empty() {
        return transactional(state, &request).await;
    }
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
                transaction_timeout_ms: 0,
            }
        }
        Err(error) => refused(&HandlerError::from(error)),
    }
}

/// InitProducerId with a transactional id (see `crate::transactions`).
async fn transactional(state: &ServerState, request: &InitProducerIdRequest) -> InitProducerIdResponse {
    match state.transactions.init(&request.transactional_id, request.transaction_timeout_ms).await {
        Ok((producer_id, producer_epoch, timeout)) => InitProducerIdResponse {
            error_code: 0,
            error_message: String::new(),
            producer_id,
            producer_epoch,
            producer_id_expiration_ms: millis(state.producer_ids.expiration()),
            batches_retained: u32::try_from(BATCHES_RETAINED).unwrap_or(u32::MAX),
            transaction_timeout_ms: millis(timeout),
        },
        Err(error) => refused(&HandlerError::from(error)),
    }
}

/// The answer to a refused InitProducerId: no producer id.
fn refused(error: &HandlerError) -> InitProducerIdResponse {
    let (error_code, error_message) = item_error(error);
    InitProducerIdResponse { error_code, error_message, producer_id: -1, producer_epoch: -1, ..Default::default() }
}
