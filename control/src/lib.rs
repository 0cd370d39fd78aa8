//! meshcast-control owns what nodes and HUBs say to each other, as a sans-IO
//! library: node identities, signed envelopes with replay protection,
//! playback tokens (PASETO), delivery receipts and acks, Merkle commitments
//! over batches, challenge sampling derived from a transcript the prover
//! has already committed to, the audit of delivery claims, and the
//! challenges and verdicts of proof of transcoding and proof of storage,
//! and the WebRTC door's framing and signalling bodies. It opens no
//! sockets and touches no disk beyond loading and saving a key file;
//! servers (edge, hub) call it and keep their own state.

pub mod audit;
pub mod ed25519;
pub mod envelope;
pub mod identity;
pub mod merkle;
pub mod messages;
pub mod placement;
pub mod receipt;
pub mod rtc;
pub mod sample;
pub mod storage;
pub mod token;
pub mod transcoding;
