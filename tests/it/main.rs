//! Integration tests of the sluice host: one binary, one module per area,
//! every guest a real component built from `tests/guests/` and `examples/`.

mod agreement;
mod bad_components;
mod cdc;
mod cli;
mod conformance;
mod crash;
mod batch_tools;
mod delta_commit;
mod evolution;
mod determinism;
mod harness;
mod host;
mod hostile;
mod hostile_output;
mod hostile_sandbox;
mod isolation;
mod kafka_faults;
mod kafka_source;
mod maintenance;
mod metrics_endpoint;
mod no_ambient_authority;
mod object_servers;
mod object_storage;
mod pipeline_run;
mod quarantine;
mod secure_broker;
mod secured_kafka;
mod seed_incident;
mod source_agreement;
mod staging;
mod table_types;
mod wit_versions;
