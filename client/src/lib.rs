//! fedmark-client: the node a partner runs beside its own data.
//!
//! It dials the coordinator (outbound only), checks each offered job, reads only the job's
//! declared columns, trains locally and sends nothing but encoded round vectors. Modules:
//! [`participant`] (the round's protocol, checks and state, with no I/O), [`driver`] (the
//! session: tokio glue that performs what the participant asks for), [`node`] (sessions and
//! reconnection), [`offer`] (whether to take an offered job), [`dial`], [`identity`],
//! [`options`] and [`error`]; [`config`] (the partner's `client.toml`), [`data`] (CSV loading
//! with bad-row accounting), [`contribution`] (what the partner computes per round, no I/O),
//! [`ledger`] (the partner's own privacy ledger), [`rounds`] (what each job asked of it),
//! [`consent`] (the consent source and per-round snapshots), [`policy`] (the partner's own
//! rules for which jobs it serves), [`audit`] (the partner's hash-chained audit file) and
//! [`transfer`] (the round's model download and vector upload).

pub mod audit;
pub mod config;
pub mod consent;
pub mod contribution;
pub mod data;
pub mod dial;
pub mod driver;
pub mod error;
pub mod identity;
pub mod ledger;
pub mod node;
pub mod offer;
pub mod options;
pub mod participant;
pub mod policy;
pub mod rounds;
pub mod transfer;
pub mod trees;
