//! fedmark-tests: the multi-party simulator (`fedmark-sim`) and the end-to-end test helpers.
//!
//! [`partition`] splits a CSV among simulated partners, [`synthetic`] makes scale workloads,
//! and [`sim`] runs a coordinator and N clients over real gRPC on loopback and writes the
//! report with its baselines. [`procs`] runs the real binaries, [`harness`] an in-process
//! coordinator, [`https`] reads the coordinator's HTTP listener over TLS, and [`scoring`] scores
//! rows from an exported model's files alone.

pub mod fuzzing;
pub mod harness;
pub mod https;
pub mod partition;
pub mod procs;
pub mod scoring;
pub mod sim;
pub mod synthetic;
