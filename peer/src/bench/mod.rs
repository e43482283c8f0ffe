//! The `peer bench …` programs. Each returns the JSON object the CLI prints as its final line.

pub mod ingest;
pub mod store;
pub mod transfer;
