//! kafka-delay
pub mod config;
pub mod envelope;
pub mod offsets;
pub mod timer;
pub mod wheel;
