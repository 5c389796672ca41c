//! fedmark-client: the node a partner runs beside its own data.
//!
//! It dials the coordinator (outbound only), checks each offered job, reads only the job's
//! declared columns, trains locally and sends nothing but encoded round vectors. Modules:
//! [`config`] (the partner's `client.toml`), [`data`] (CSV loading with bad-row accounting),
//! [`contribution`] (what the partner computes per round, no I/O), [`ledger`] (the
//! partner's own privacy ledger), [`consent`] (the consent source and per-round snapshots),
//! [`policy`] (the partner's own rules for which jobs it serves), [`audit`] (the partner's
//! hash-chained audit file), [`node`] (the protocol driver) and [`transfer`] (the round's model
//! download and vector upload).

pub mod audit;
pub mod config;
pub mod consent;
pub mod contribution;
pub mod data;
pub mod ledger;
pub mod node;
pub mod policy;
pub mod rounds;
pub mod transfer;
