//! Playback tokens: PASETO v4.public (Ed25519) via `pasetors`, not a
//! home-made format. A token names the content (a path prefix), an expiry,
//! a byte budget and the viewer's session public key; the ack a player signs
//! with that session key is what makes a delivery countable.
//!
//! Verification is sans-IO: the caller passes `now` and says which issuer
//! keys it trusts.

use crate::identity::NodeKey;
use pasetors::claims::Claims;
use pasetors::keys::{AsymmetricPublicKey, AsymmetricSecretKey};
use pasetors::token::UntrustedToken;
use pasetors::version4::{PublicToken, V4};
use pasetors::Public;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Bound into every signature so a token can't be replayed as another
/// PASETO the same key signs.
const IMPLICIT: &[u8] = b"meshcast playback token v1";

/// Tokens ride in URL paths; anything longer is refused before parsing.
pub const MAX_TOKEN_LEN: usize = 2048;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    /// Public key of the issuer (the HUB or a registered customer key).
    pub issuer: [u8; 32],
    /// The token covers request paths that start with this.
    pub prefix: String,
    /// Unix seconds.
    pub expires: u64,
    /// Bytes the session may be served, across all edges.
    pub budget: u64,
    /// The viewer's Ed25519 session key; acks must be signed with it.
    pub session: [u8; 32],
    /// The edges (node public keys) the issuer steered this viewer to:
    /// only they may serve it and be paid for it. Empty: any edge (the
    /// issuer's own choice — an owner's token pays from the owner's escrow).
    pub edges: Vec<[u8; 32]>,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("token is malformed: {0}")]
    Malformed(String),
    #[error("token issuer {0} is not trusted here")]
    UnknownIssuer(String),
    #[error("token signature does not verify (tampered with, or signed by another key)")]
    BadSignature,
    #[error("token expired {0} s ago")]
    Expired(u64),
    #[error("token covers {prefix:?}, not {path:?}")]
    WrongPrefix { prefix: String, path: String },
    #[error("cannot sign a token: {0}")]
    Sign(String),
    #[error(
        "token was issued for other edges ({0}); this one may neither serve it nor be paid for it"
    )]
    OtherEdges(String),
}

impl TokenError {
    /// Refusals that are the token's fault, not the fault of an edge that
    /// served it in good faith (an issuer the HUB does not trust, or no
    /// longer does): in a claim they cost only the token's own entries.
    /// (An expired token is not among them: an honest edge serves a token
    /// only before its expiry, and its receipts then fall before it too.)
    pub fn costs_only_its_entries(&self) -> bool {
        matches!(self, TokenError::UnknownIssuer(_))
    }
}

/// A short stable id for a token (receipts and budgets name tokens by it).
pub fn token_id(token: &str) -> [u8; 16] {
    let h = blake3::derive_key("meshcast token id v1", token.as_bytes());
    h[..16].try_into().expect("16 of 32 bytes")
}

fn rfc3339(unix: u64) -> Result<String, TokenError> {
    let t = OffsetDateTime::from_unix_timestamp(unix as i64)
        .map_err(|e| TokenError::Sign(e.to_string()))?;
    t.format(&Rfc3339)
        .map_err(|e| TokenError::Sign(e.to_string()))
}

/// Signs `claims` with `key`; `claims.issuer` must be `key`'s public key.
/// Refuses claims every edge would refuse (a prefix that is not a path,
/// too many edges), so no issuer mints a token that cannot be used.
pub fn issue(key: &NodeKey, claims: &TokenClaims, now: u64) -> Result<String, TokenError> {
    assert_eq!(
        claims.issuer,
        key.public().to_bytes(),
        "issuer is the signer"
    );
    if !claims.prefix.starts_with('/') {
        return Err(TokenError::Sign(format!(
            "the path prefix {:?} does not start with '/'",
            claims.prefix
        )));
    }
    if claims.edges.len() > MAX_TOKEN_EDGES {
        return Err(TokenError::Sign(format!(
            "a token names at most {MAX_TOKEN_EDGES} edges, not {}",
            claims.edges.len()
        )));
    }
    let mut c = Claims::new().map_err(|e| TokenError::Sign(e.to_string()))?;
    let sign_err = |e: pasetors::errors::Error| TokenError::Sign(e.to_string());
    c.issuer(&hex::encode(claims.issuer)).map_err(sign_err)?;
    c.issued_at(&rfc3339(now)?).map_err(sign_err)?;
    c.not_before(&rfc3339(now)?).map_err(sign_err)?;
    c.expiration(&rfc3339(claims.expires)?).map_err(sign_err)?;
    c.add_additional("pfx", claims.prefix.clone())
        .map_err(sign_err)?;
    c.add_additional("bud", claims.budget).map_err(sign_err)?;
    c.add_additional("ses", hex::encode(claims.session))
        .map_err(sign_err)?;
    if !claims.edges.is_empty() {
        let edges: Vec<String> = claims.edges.iter().map(hex::encode).collect();
        c.add_additional("edg", edges).map_err(sign_err)?;
    }
    let mut nonce = [0u8; 12];
    getrandom::fill(&mut nonce).map_err(|e| TokenError::Sign(e.to_string()))?;
    c.token_identifier(&hex::encode(nonce)).map_err(sign_err)?;
    let mut secret = key.signing().to_bytes().to_vec();
    secret.extend_from_slice(&claims.issuer);
    let sk = AsymmetricSecretKey::<V4>::from(&secret).map_err(sign_err)?;
    let payload = c.to_string().map_err(sign_err)?;
    PublicToken::sign(&sk, payload.as_bytes(), None, Some(IMPLICIT)).map_err(sign_err)
}

fn hex32(v: Option<&serde_json::Value>, what: &str) -> Result<[u8; 32], TokenError> {
    let s = v
        .and_then(|v| v.as_str())
        .ok_or_else(|| TokenError::Malformed(format!("no {what} claim")))?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out)
        .map_err(|_| TokenError::Malformed(format!("{what} is not 64 hex digits")))?;
    Ok(out)
}

fn unix(v: Option<&serde_json::Value>, what: &str) -> Result<u64, TokenError> {
    let s = v
        .and_then(|v| v.as_str())
        .ok_or_else(|| TokenError::Malformed(format!("no {what} claim")))?;
    let t = OffsetDateTime::parse(s, &Rfc3339)
        .map_err(|_| TokenError::Malformed(format!("{what} is not an RFC 3339 time")))?;
    Ok(t.unix_timestamp().max(0) as u64)
}

/// Checks the signature against a trusted issuer and the expiry against
/// `now`; returns the claims. Budget and prefix are the caller's to apply.
pub fn verify(
    token: &str,
    trusted: impl Fn(&[u8; 32]) -> bool,
    now: u64,
) -> Result<TokenClaims, TokenError> {
    let (untrusted, unverified) = parse_untrusted(token)?;
    let issuer = hex32(unverified.get_claim("iss"), "iss")?;
    if !trusted(&issuer) {
        return Err(TokenError::UnknownIssuer(hex::encode(issuer)));
    }
    let pk = AsymmetricPublicKey::<V4>::from(&issuer)
        .map_err(|_| TokenError::Malformed("issuer is not an Ed25519 key".into()))?;
    let trusted_token = PublicToken::verify(&pk, &untrusted, None, Some(IMPLICIT))
        .map_err(|_| TokenError::BadSignature)?;
    let c = Claims::from_bytes(trusted_token.payload().as_bytes())
        .map_err(|_| TokenError::Malformed("payload is not a claims object".into()))?;
    let claims = claims_of(&c, issuer)?;
    if claims.expires < now {
        return Err(TokenError::Expired(now - claims.expires));
    }
    Ok(claims)
}

/// A token's claims read *without* checking its signature or expiry: only
/// for entries the caller pays nothing for (a token whose issuer the HUB
/// does not trust), so that they can still be checked for consistency.
pub fn read_unverified(token: &str) -> Result<TokenClaims, TokenError> {
    let (_, c) = parse_untrusted(token)?;
    let issuer = hex32(c.get_claim("iss"), "iss")?;
    claims_of(&c, issuer)
}

/// The token and its payload's claims, neither checked yet.
fn parse_untrusted(token: &str) -> Result<(UntrustedToken<Public, V4>, Claims), TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed(format!(
            "{} bytes long (at most {MAX_TOKEN_LEN})",
            token.len()
        )));
    }
    let untrusted = UntrustedToken::<Public, V4>::try_from(token)
        .map_err(|_| TokenError::Malformed("not a PASETO v4.public token".into()))?;
    let claims = Claims::from_bytes(untrusted.untrusted_payload())
        .map_err(|_| TokenError::Malformed("payload is not a claims object".into()))?;
    Ok((untrusted, claims))
}

fn claims_of(c: &Claims, issuer: [u8; 32]) -> Result<TokenClaims, TokenError> {
    let expires = unix(c.get_claim("exp"), "exp")?;
    let prefix = c
        .get_claim("pfx")
        .and_then(|v| v.as_str())
        .filter(|p| p.starts_with('/'))
        .ok_or_else(|| TokenError::Malformed("no pfx (path prefix) claim".into()))?
        .to_string();
    let budget = c
        .get_claim("bud")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| TokenError::Malformed("no bud (byte budget) claim".into()))?;
    Ok(TokenClaims {
        issuer,
        prefix,
        expires,
        budget,
        session: hex32(c.get_claim("ses"), "ses")?,
        edges: edges(c.get_claim("edg"))?,
    })
}

/// When a token was issued (its `iat`, Unix seconds). Reads the payload
/// without checking the signature: call it only on a token that verified.
pub fn issued_at(token: &str) -> Option<u64> {
    let untrusted = UntrustedToken::<Public, V4>::try_from(token).ok()?;
    let c = Claims::from_bytes(untrusted.untrusted_payload()).ok()?;
    unix(c.get_claim("iat"), "iat").ok()
}

/// At most this many edges in one token (a steering decision, not a list
/// of the network).
pub const MAX_TOKEN_EDGES: usize = 8;

fn edges(v: Option<&serde_json::Value>) -> Result<Vec<[u8; 32]>, TokenError> {
    let Some(v) = v else {
        return Ok(Vec::new());
    };
    let list = v
        .as_array()
        .filter(|l| !l.is_empty() && l.len() <= MAX_TOKEN_EDGES)
        .ok_or_else(|| {
            TokenError::Malformed(format!("edg must list 1 to {MAX_TOKEN_EDGES} edge keys"))
        })?;
    list.iter().map(|e| hex32(Some(e), "edg")).collect()
}

impl TokenClaims {
    /// Whether the edge with public key `edge` may serve this token and be
    /// paid for it.
    pub fn allows_edge(&self, edge: &[u8; 32]) -> Result<(), TokenError> {
        if self.edges.is_empty() || self.edges.contains(edge) {
            return Ok(());
        }
        let named: Vec<String> = self.edges.iter().map(|e| hex::encode(&e[..4])).collect();
        Err(TokenError::OtherEdges(named.join(", ")))
    }

    /// Whether the token covers `path`.
    pub fn covers(&self, path: &str) -> Result<(), TokenError> {
        if path.starts_with(&self.prefix) && !path.contains("/../") {
            Ok(())
        } else {
            Err(TokenError::WrongPrefix {
                prefix: self.prefix.clone(),
                path: path.to_string(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(hub: &NodeKey) -> TokenClaims {
        TokenClaims {
            issuer: hub.public().to_bytes(),
            prefix: "/v/abc/".into(),
            expires: 2_000_000_000,
            budget: 10_000_000,
            session: [5; 32],
            edges: Vec::new(),
        }
    }

    #[test]
    fn issue_verify_and_refusals() {
        let hub = NodeKey::from_seed([1; 32]);
        let other = NodeKey::from_seed([2; 32]);
        let c = claims(&hub);
        let t = issue(&hub, &c, 1_900_000_000).unwrap();
        assert!(t.starts_with("v4.public."));
        let ours = |k: &[u8; 32]| *k == hub.public().to_bytes();
        assert_eq!(verify(&t, ours, 1_900_000_000).unwrap(), c);
        assert_eq!(issued_at(&t), Some(1_900_000_000));
        assert_eq!(
            verify(&t, ours, 2_000_000_010),
            Err(TokenError::Expired(10))
        );
        assert!(matches!(
            verify(&t, |_| false, 0),
            Err(TokenError::UnknownIssuer(_))
        ));
        // Same claims signed by a key that only claims to be the hub.
        let mut forged_claims = claims(&other);
        forged_claims.issuer = other.public().to_bytes();
        let forged = issue(&other, &forged_claims, 0).unwrap();
        assert!(matches!(
            verify(&forged, ours, 0),
            Err(TokenError::UnknownIssuer(_))
        ));
        // Flip one character of the signed payload.
        let mut bytes = t.clone().into_bytes();
        let i = 20;
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert!(verify(&tampered, ours, 0).is_err());
        assert!(matches!(
            verify("v3.local.xyz", ours, 0),
            Err(TokenError::Malformed(_))
        ));
        assert_eq!(c.covers("/v/abc/720p/1.m4s"), Ok(()));
        assert!(c.covers("/v/abd/720p/1.m4s").is_err());
        assert!(c.covers("/v/abc/../xyz/1.m4s").is_err());
        assert_ne!(token_id(&t), token_id(&forged));
    }

    /// Found by the `token` fuzz target: `issue` signed an empty prefix
    /// that `verify` then called malformed.
    #[test]
    fn issue_refuses_what_verify_would() {
        let hub = NodeKey::from_seed([1; 32]);
        let mut c = claims(&hub);
        c.prefix = String::new();
        assert!(matches!(issue(&hub, &c, 0), Err(TokenError::Sign(e)) if e.contains("'/'")));
        let mut c = claims(&hub);
        c.edges = vec![[3; 32]; MAX_TOKEN_EDGES + 1];
        assert!(matches!(issue(&hub, &c, 0), Err(TokenError::Sign(e)) if e.contains("at most")));
        c.edges.pop();
        let ours = |k: &[u8; 32]| *k == hub.public().to_bytes();
        assert_eq!(verify(&issue(&hub, &c, 0).unwrap(), ours, 0).unwrap(), c);
    }

    #[test]
    fn a_steered_token_names_its_edges_and_no_other() {
        let hub = NodeKey::from_seed([1; 32]);
        let ours = |k: &[u8; 32]| *k == hub.public().to_bytes();
        let mut c = claims(&hub);
        let any = verify(&issue(&hub, &c, 0).unwrap(), ours, 0).unwrap();
        assert_eq!(any.allows_edge(&[9; 32]), Ok(()), "unsteered: any edge");
        c.edges = vec![[3; 32], [4; 32]];
        let steered = verify(&issue(&hub, &c, 0).unwrap(), ours, 0).unwrap();
        assert_eq!(steered.edges, c.edges);
        assert_eq!(steered.allows_edge(&[4; 32]), Ok(()));
        assert!(matches!(
            steered.allows_edge(&[9; 32]),
            Err(TokenError::OtherEdges(_))
        ));
    }
}
