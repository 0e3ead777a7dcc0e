//! The smallest sink: returns `Ok` without reading a record or staging
//! anything. Measures the fixed cost of a batch (instantiate, call, commit an
//! empty output) and shows that unread records are not an error.

fn sink(_batch: sluice_sdk::Batch) -> Result<(), sluice_sdk::SinkError> {
    Ok(())
}

sluice_sdk::export_sink!(sink);
