//! Every JetStream stream the relay applies at start (`run` and `migrate`):
//! the events stream and `SPOOR_DEAD`, each from its
//! embedded definition (`deploy/nats/*-stream.json`) with the operator's
//! replica count (`--stream-replicas`): 1 on a single nats-server, 3 on a
//! three-node cluster, where a PubAck then means two of three nodes hold
//! the message. A stream whose replica count differs is updated to it
//! (JetStream scales it in place).

use async_nats::jetstream::{self, stream::Config};
use spoor_core::contract::DEAD_STREAM;

use super::dead_letter::DEAD_STREAM_CONFIG_JSON;
use super::nats::{self as source_nats, SourceError, StreamLimits};

/// The streams for `events_stream`, with `replicas` each (and the events
/// stream's `limits` where the operator set them), and the definition each
/// comes from (which fields count as drift).
pub fn definitions(
    events_stream: &str,
    replicas: usize,
    limits: &StreamLimits,
) -> Result<Vec<(Config, String)>, SourceError> {
    let events = source_nats::events_definition(limits)?;
    let mut streams = vec![
        (
            source_nats::stream_config_from(&events, events_stream)?,
            events,
        ),
        (
            source_nats::stream_config_from(DEAD_STREAM_CONFIG_JSON, DEAD_STREAM)?,
            DEAD_STREAM_CONFIG_JSON.to_string(),
        ),
    ];
    for (config, _) in &mut streams {
        config.num_replicas = replicas.max(1);
    }
    Ok(streams)
}

/// Creates each stream if missing, or updates it where it differs from its
/// definition (replica count and limits included; never below what a
/// stream holds).
pub async fn ensure_all(
    js: &jetstream::Context,
    events_stream: &str,
    replicas: usize,
    limits: &StreamLimits,
) -> Result<(), SourceError> {
    for (config, definition) in definitions(events_stream, replicas, limits)? {
        source_nats::ensure_stream_config(js, config, &definition).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_stream_gets_the_replica_count() {
        let streams = super::definitions("SPOOR_EVENTS", 3, &Default::default()).unwrap();
        let names: Vec<&str> = streams.iter().map(|(c, _)| c.name.as_str()).collect();
        assert_eq!(names, ["SPOOR_EVENTS", "SPOOR_DEAD"]);
        assert!(streams.iter().all(|(c, _)| c.num_replicas == 3));
        let single = super::definitions("SPOOR_EVENTS", 1, &Default::default()).unwrap();
        assert!(single.iter().all(|(c, _)| c.num_replicas == 1));
    }
}
