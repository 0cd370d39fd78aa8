//! The token step of the pipeline: `/t/{token}/rest` paths, PASETO
//! verification (cached: an Ed25519 check per request would cost more than
//! serving a small object), prefix, expiry and the session's byte budget.

use meshcast_control::messages::{issuer_allows, issuer_known, Issuer};
use meshcast_control::token::{self, token_id, TokenClaims, TokenError};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use tinyufo::TinyUfo;

/// A token that verified once; expiry is re-checked on every use.
#[derive(Debug)]
pub struct VerifiedToken {
    pub token: Arc<str>,
    pub id: [u8; 16],
    pub claims: TokenClaims,
}

/// What the gate decided for one request.
#[derive(Debug)]
pub enum Gate {
    /// No token needed and none given.
    Open,
    /// A valid token; `path` is the request path without `/t/{token}`,
    /// `paid` whether it is media (receipts and budget) or a playlist.
    Token {
        token: Arc<VerifiedToken>,
        path: String,
        paid: bool,
    },
    Denied {
        reason: String,
        label: &'static str,
    },
}

/// Site-level token settings.
#[derive(Debug, Clone)]
pub struct SiteTokens {
    pub paths: Vec<String>,
    pub issuers: Vec<Issuer>,
}

/// Verdicts kept (each a token's claims, ~300 bytes): a miss only costs one
/// Ed25519 verification again.
const VERIFIED_LIMIT: usize = 100_000;
/// Above this many tokens in the spend book, expired ones are dropped.
const SERVED_PRUNE_AT: usize = 100_000;

/// What verifying a token's text once concluded.
type Verdict = Result<Arc<VerifiedToken>, TokenError>;

/// Bytes served under one token, kept for as long as the token lives.
#[derive(Debug, Clone, Copy)]
struct Served {
    bytes: u64,
    expires: u64,
}

/// Verified tokens by BLAKE3 of their text (a bounded TinyUFO cache that
/// evicts), and bytes served per token. Spend is never forgotten while its
/// token lives — only expired tokens are pruned — so no flood of fresh
/// tokens can reset another viewer's budget.
pub struct TokenBook {
    verified: TinyUfo<u64, ([u8; 32], Verdict)>,
    served: Mutex<HashMap<[u8; 16], Served>>,
    prune_at: std::sync::atomic::AtomicUsize,
}

impl Default for TokenBook {
    fn default() -> Self {
        TokenBook {
            verified: TinyUfo::new(VERIFIED_LIMIT, VERIFIED_LIMIT),
            served: Mutex::default(),
            prune_at: SERVED_PRUNE_AT.into(),
        }
    }
}

/// Splits `/t/{token}/rest` into the token and `/rest`.
pub fn split_token_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/t/")?;
    let slash = rest.find('/')?;
    Some((&rest[..slash], &rest[slash..]))
}

impl TokenBook {
    /// Verifies (or recalls) a token. Unknown-issuer results are not
    /// remembered: the HUB may name the issuer a moment later.
    pub fn verify(
        &self,
        text: &str,
        known: &dyn Fn(&[u8; 32]) -> bool,
        allows: &dyn Fn(&[u8; 32], &str) -> bool,
    ) -> Result<Arc<VerifiedToken>, TokenError> {
        let key: [u8; 32] = blake3::hash(text.as_bytes()).into();
        let short = u64::from_le_bytes(key[..8].try_into().expect("8 of 32"));
        let hit = self.verified.get(&short).filter(|(k, _)| *k == key);
        if let Some((_, hit)) = hit {
            // Trust can be withdrawn after a token verified: ask again.
            return match hit {
                Ok(t) if !allows(&t.claims.issuer, &t.claims.prefix) => {
                    Err(TokenError::UnknownIssuer(hex::encode(t.claims.issuer)))
                }
                other => other,
            };
        }
        // Expiry is checked by the caller on every use, so verify as of 0.
        let result = token::verify(text, known, 0)
            .and_then(|claims| {
                if allows(&claims.issuer, &claims.prefix) {
                    Ok(claims)
                } else {
                    Err(TokenError::UnknownIssuer(format!(
                        "{} for {}",
                        hex::encode(claims.issuer),
                        claims.prefix
                    )))
                }
            })
            .map(|claims| {
                Arc::new(VerifiedToken {
                    token: Arc::from(text),
                    id: token_id(text),
                    claims,
                })
            });
        if !matches!(result, Err(TokenError::UnknownIssuer(_))) {
            self.verified.put(short, (key, result.clone()), 1);
        }
        result
    }

    /// The token step for one request. `me` is this edge's node key, if
    /// it has one: a token steered to other edges is refused here, since
    /// this edge would not be paid for it.
    pub fn gate(
        &self,
        site: Option<&SiteTokens>,
        hub_issuers: &[Issuer],
        me: Option<&[u8; 32]>,
        path: &str,
        now: u64,
    ) -> Gate {
        let Some((text, rest)) = split_token_path(path) else {
            let required =
                site.is_some_and(|s| s.paths.iter().any(|p| path.starts_with(p.as_str())));
            return if required {
                Gate::Denied {
                    reason: "missing playback token: this path needs /t/{token}/… in front of it"
                        .into(),
                    label: "token_missing",
                }
            } else {
                Gate::Open
            };
        };
        let allows = |k: &[u8; 32], prefix: &str| {
            issuer_allows(hub_issuers, k, prefix)
                || site.is_some_and(|s| issuer_allows(&s.issuers, k, prefix))
        };
        let known = |k: &[u8; 32]| {
            issuer_known(hub_issuers, k) || site.is_some_and(|s| issuer_known(&s.issuers, k))
        };
        let denied = |e: TokenError, label| Gate::Denied {
            reason: e.to_string(),
            label,
        };
        let t = match self.verify(text, &known, &allows) {
            Ok(t) => t,
            Err(e @ TokenError::UnknownIssuer(_)) => return denied(e, "token_issuer"),
            Err(e @ TokenError::BadSignature) => return denied(e, "token_signature"),
            Err(e) => return denied(e, "token_malformed"),
        };
        if t.claims.expires < now {
            return denied(TokenError::Expired(now - t.claims.expires), "token_expired");
        }
        if let Err(e) = t.claims.covers(rest) {
            return denied(e, "token_prefix");
        }
        if let Some(Err(e)) = me.map(|k| t.claims.allows_edge(k)) {
            return denied(e, "token_edge");
        }
        let served = self.served.lock().get(&t.id).map_or(0, |s| s.bytes);
        // Playlists are not paid bytes: a spent budget still lets the
        // player read them (and so learn why media is refused).
        let paid = meshcast_control::receipt::is_paid_media(rest);
        if served >= t.claims.budget && paid {
            return Gate::Denied {
                reason: format!(
                    "this session's byte budget ({} bytes) is spent; ask for a new token",
                    t.claims.budget
                ),
                label: "token_budget",
            };
        }
        Gate::Token {
            path: rest.to_string(),
            token: t,
            paid,
        }
    }

    /// Counts bytes sent under a token against its budget. When the book
    /// grows past its threshold, tokens expired by `now` (Unix seconds) are
    /// dropped; the threshold then follows what is left, so pruning stays
    /// rare however many live tokens there are.
    pub fn add_served(&self, token: &VerifiedToken, bytes: u64, now: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let mut served = self.served.lock();
        let entry = served.entry(token.id).or_insert(Served {
            bytes: 0,
            expires: token.claims.expires,
        });
        entry.bytes = entry.bytes.saturating_add(bytes);
        if served.len() > self.prune_at.load(Relaxed) {
            served.retain(|_, s| s.expires >= now);
            self.prune_at
                .store((served.len() * 2).max(SERVED_PRUNE_AT), Relaxed);
        }
    }

    /// Bytes served under a token so far.
    pub fn served(&self, id: &[u8; 16]) -> u64 {
        self.served.lock().get(id).map_or(0, |s| s.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshcast_control::identity::NodeKey;

    #[test]
    fn gate_decisions() {
        let hub = NodeKey::from_seed([1; 32]);
        let issuers = vec![Issuer {
            key: hex::encode(hub.public().to_bytes()),
            prefix: "/".into(),
        }];
        let claims = TokenClaims {
            issuer: hub.public().to_bytes(),
            prefix: "/v/abc/".into(),
            expires: 1000,
            budget: 500,
            session: [4; 32],
            edges: Vec::new(),
        };
        let t = token::issue(&hub, &claims, 0).unwrap();
        let site = SiteTokens {
            paths: vec!["/v/".into()],
            issuers: vec![],
        };
        let book = TokenBook::default();
        let p = format!("/t/{t}/v/abc/720p/1.m4s");
        match book.gate(Some(&site), &issuers, None, &p, 10) {
            Gate::Token { path, .. } => assert_eq!(path, "/v/abc/720p/1.m4s"),
            other => panic!("{other:?}"),
        }
        let label = |g: Gate| match g {
            Gate::Denied { label, .. } => label,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            label(book.gate(Some(&site), &issuers, None, &p, 2000)),
            "token_expired"
        );
        assert_eq!(
            label(book.gate(Some(&site), &[], None, &p, 10)),
            "token_issuer"
        );
        let other = format!("/t/{t}/v/xyz/1.m4s");
        assert_eq!(
            label(book.gate(Some(&site), &issuers, None, &other, 10)),
            "token_prefix"
        );
        assert_eq!(
            label(book.gate(Some(&site), &issuers, None, "/v/abc/1.m4s", 10)),
            "token_missing"
        );
        assert!(matches!(
            book.gate(Some(&site), &issuers, None, "/play/abc", 10),
            Gate::Open
        ));
        assert!(matches!(
            book.gate(None, &issuers, None, "/v/abc/1.m4s", 10),
            Gate::Open
        ));
        assert_eq!(
            label(book.gate(Some(&site), &issuers, None, "/t/garbage/v/abc/1", 10)),
            "token_malformed"
        );
        let Gate::Token {
            token: verified, ..
        } = book.gate(Some(&site), &issuers, None, &p, 10)
        else {
            panic!("the token passes before it is spent");
        };
        // Steered to edges [7] and [8]: edge [7] serves it, edge [9] may not.
        let steered = TokenClaims {
            edges: vec![[7; 32], [8; 32]],
            ..claims.clone()
        };
        let steered = format!(
            "/t/{}/v/abc/720p/1.m4s",
            token::issue(&hub, &steered, 0).unwrap()
        );
        assert!(matches!(
            book.gate(Some(&site), &issuers, Some(&[7; 32]), &steered, 10),
            Gate::Token { paid: true, .. }
        ));
        assert_eq!(
            label(book.gate(Some(&site), &issuers, Some(&[9; 32]), &steered, 10)),
            "token_edge"
        );
        book.add_served(&verified, 500, 10);
        assert_eq!(
            label(book.gate(Some(&site), &issuers, None, &p, 10)),
            "token_budget"
        );
        // Playlists are not paid bytes: they still pass once it is spent.
        for playlist in ["master.m3u8", "360p/index.m3u8", "manifest.mpd"] {
            let path = format!("/t/{t}/v/abc/{playlist}");
            assert!(
                matches!(
                    book.gate(Some(&site), &issuers, None, &path, 10),
                    Gate::Token { .. }
                ),
                "{playlist}"
            );
        }
    }

    /// The attacker: free tokens, sent by the hundred thousand, used to
    /// push a viewer's spend out of the book (the old map cleared itself
    /// at 100 000 entries, resetting every budget).
    #[test]
    fn a_flood_of_tokens_never_resets_a_live_budget() {
        let book = TokenBook::default();
        let token = |n: u64, expires: u64| VerifiedToken {
            token: Arc::from(format!("t{n}").as_str()),
            id: {
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&n.to_le_bytes());
                id
            },
            claims: TokenClaims {
                issuer: [1; 32],
                prefix: "/v/abc/".into(),
                expires,
                budget: 1000,
                session: [4; 32],
                edges: Vec::new(),
            },
        };
        let viewer = token(u64::MAX, 10_000);
        book.add_served(&viewer, 900, 100);
        for n in 0..250_000 {
            // Flood tokens that expire at 500; the clock reaches 600.
            book.add_served(&token(n, 500), 1, 600);
        }
        assert_eq!(
            book.served(&viewer.id),
            900,
            "the live budget is remembered"
        );
        let kept = book.served.lock().len();
        assert!(kept < 200_000, "expired tokens are pruned ({kept} kept)");
        // Tokens still alive are never dropped, however many there are.
        let book = TokenBook::default();
        for n in 0..150_000 {
            book.add_served(&token(n, 10_000), 7, 600);
        }
        assert_eq!(book.served.lock().len(), 150_000);
        assert_eq!(book.served(&token(3, 10_000).id), 7);
    }
}
