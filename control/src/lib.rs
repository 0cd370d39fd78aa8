//! meshcast-control owns what nodes and HUBs say to each other, as a sans-IO
//! library: node identities, signed envelopes with replay protection,
//! Merkle commitments over batches, and challenge sampling derived from a
//! transcript the prover has already committed to. It opens no sockets and
//! touches no disk beyond loading and saving a key file; servers call it.

pub mod envelope;
pub mod identity;
pub mod merkle;
pub mod sample;
