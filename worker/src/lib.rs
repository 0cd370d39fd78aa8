//! meshcast-worker is the worker node: it registers with its HUB, pulls
//! transcode jobs over signed long-polls (it opens no port, so it may sit
//! behind NAT), encodes each chunk to every rung with `meshcast-transcode`,
//! uploads the segments with the lease's capability and commits to them
//! with a signed Merkle commitment, reporting progress as it goes. It holds
//! no protocol rules of its own (those are `meshcast-control`'s) and no
//! media logic (`meshcast-transcode`'s); it must not decide what is paid.
//!
//! With the storage role it also listens (`storage.rs`): it keeps the
//! shards its HUB signs for and serves them to edges and audits.
//!
//! Each step is a public function so that a test can drive a worker that
//! lies (replacing some of its output between encoding and committing).

mod client;
mod run;
pub mod storage;

pub use client::{Client, CommitAnswer, WorkerError};
pub use run::{commitment_for, encode, run, upload_output, work_one};
