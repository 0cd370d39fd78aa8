//! meshcast-consensus replicates the ledger among the HUBs with Malachite,
//! a Tendermint-family BFT engine: it owns the ledger's `Context` for
//! Malachite (heights, block values, votes, proposal streams, Ed25519
//! signing), the wire and WAL encoding, the application loop that builds
//! blocks from the mempool and commits decided ones, and starting a
//! validator (engine, API, metrics). It must not change what a transaction
//! or block means — that is `meshcast-ledger`'s state machine — and it
//! writes no consensus protocol of its own.

pub mod app;
pub mod codec;
pub mod context;
pub mod forward;
pub mod metrics;
pub mod proposed;
pub mod streams;
pub mod validator;

pub use app::Pacing;
pub use validator::{router, run_home, setup_from_home, start, Running, Setup, StartError};
