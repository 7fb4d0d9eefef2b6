//! The broker of tests/soak.rs under its old name; the harness is
//! `support::Kafka` (tests/support/kafka.rs). Kept until soak.rs imports
//! that directly.
#![allow(unused_imports)]

pub use crate::support::Kafka as Broker;
