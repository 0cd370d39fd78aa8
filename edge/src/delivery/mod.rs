//! Proof of delivery at the edge: playback tokens on the way in, signed
//! receipts on the way out, acks from players logged durably and claimed at
//! the HUB once per epoch. The protocol rules live in `meshcast-control`;
//! this module holds the edge's state and I/O.

pub mod acklog;
pub mod book;
pub mod gate;
pub mod hub_client;

use arc_swap::ArcSwap;
use book::Book;
use gate::TokenBook;
use meshcast_control::messages::Issuer;
use std::sync::Arc;

/// Process-wide delivery state; survives config reloads.
pub struct Delivery {
    pub tokens: TokenBook,
    /// Token issuers the HUB named in its last answer.
    pub hub_issuers: ArcSwap<Vec<Issuer>>,
    /// Issuers every site's config trusts (for acks, which name no site).
    pub static_issuers: ArcSwap<Vec<Issuer>>,
    /// Present when the edge has a `[node]` identity.
    pub book: Option<Arc<Book>>,
    /// The HUB's base URL, for players that ask (`GET /v1/edge`).
    pub hub: Option<String>,
}

impl Delivery {
    pub fn new(book: Option<Arc<Book>>, hub: Option<String>) -> Self {
        Delivery {
            tokens: TokenBook::default(),
            hub_issuers: ArcSwap::from_pointee(Vec::new()),
            static_issuers: ArcSwap::from_pointee(Vec::new()),
            book,
            hub,
        }
    }

    /// `GET /v1/edge`: who this edge is and where its HUB is.
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "node": self.book.as_ref().map(|b| b.sealer.key().id()),
            "key": self.book.as_ref().map(|b| hex::encode(b.sealer.node())),
            "hub": self.hub,
            "receipts": self.book.is_some(),
        })
    }
}
