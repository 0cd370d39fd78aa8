//! The delivery audit, simulated deterministically: an honest epoch passes
//! and is credited exactly; each way of cheating is refused with its reason.

use ed25519_dalek::SigningKey;
use meshcast_control::audit::{self, build_claim, AuditError, Claim, Committed};
use meshcast_control::identity::NodeKey;
use meshcast_control::receipt::{Ack, ReceiptSealer, SealedReceipt};
use meshcast_control::token::{self, token_id, TokenClaims};

const EPOCH_SECS: u64 = 60;
const EPOCH: u64 = 29_000_000; // ~ 2025
const NONCE: [u8; 32] = [42; 32];

struct World {
    hub: NodeKey,
    edge: ReceiptSealer,
    session: SigningKey,
    token: String,
}

fn world(budget: u64, expires: u64) -> World {
    let hub = NodeKey::from_seed([1; 32]);
    let session = SigningKey::from_bytes(&[7; 32]);
    let claims = TokenClaims {
        issuer: hub.public().to_bytes(),
        prefix: "/v/abc/".into(),
        expires,
        budget,
        session: session.verifying_key().to_bytes(),
        edges: Vec::new(),
    };
    let token = token::issue(&hub, &claims, 0).unwrap();
    World {
        hub,
        edge: ReceiptSealer::new(NodeKey::from_seed([2; 32])),
        session,
        token,
    }
}

fn epoch_start_ms() -> u64 {
    EPOCH * EPOCH_SECS * 1000
}

fn acks(w: &World, n: usize, time_ms: u64) -> Vec<(String, Ack)> {
    (0..n)
        .map(|i| {
            let r = w.edge.issue(
                token_id(&w.token),
                [3; 16],
                &format!("/v/abc/720p/{i}.m4s"),
                0,
                1000 + i as u64,
                time_ms + i as u64,
                i as u64,
            );
            (w.token.clone(), Ack::sign(&w.session, r))
        })
        .collect()
}

/// What the HUB published in these tests: `/v/abc/720p/{i}.m4s`, 1000 + i
/// bytes each, content [3; 16] (what `acks` signs).
fn catalog(path: &str) -> Option<audit::Published> {
    let i: u64 = path
        .strip_prefix("/v/abc/720p/")?
        .strip_suffix(".m4s")?
        .parse()
        .ok()?;
    Some(audit::Published {
        size: 1000 + i,
        content: [3; 16],
    })
}

fn audit(w: &World, c: &Committed) -> Result<u64, AuditError> {
    audit_claim(w, &c.claim, |idx| c.open(idx).unwrap())
}

fn audit_claim(
    w: &World,
    claim: &Claim,
    open: impl Fn(&[usize]) -> audit::Opening,
) -> Result<u64, AuditError> {
    let (bytes, unpaid) = audit_with_reasons(w, claim, open)?;
    assert!(unpaid.is_empty(), "{unpaid:?}");
    Ok(bytes)
}

/// The whole audit with the HUB trusting only `w.hub`: bytes credited and
/// the reasons some were not.
fn audit_with_reasons(
    w: &World,
    claim: &Claim,
    open: impl Fn(&[usize]) -> audit::Opening,
) -> Result<(u64, Vec<String>), AuditError> {
    let hub_pk = w.hub.public().to_bytes();
    let now_ms = epoch_start_ms() + 2 * EPOCH_SECS * 1000;
    let checked = audit::check_claim(claim, &w.edge.node(), |k| *k == hub_pk, now_ms)?;
    let bytes = serde_json::to_vec(claim).unwrap();
    let idx = audit::challenge(&bytes, &NONCE, claim);
    audit::check_proof(claim, &checked, &w.edge.node(), &idx, &open(&idx), catalog)?;
    let credit = audit::settle(&checked, claim, |_| 0, |_| false);
    Ok((credit.bytes, credit.over_budget))
}

#[test]
fn honest_epoch_is_credited_exactly() {
    let w = world(u64::MAX, 4_000_000_000);
    let a = acks(&w, 5000, epoch_start_ms());
    let expected: u64 = a.iter().map(|(_, a)| a.receipt.receipt.len).sum();
    let c = build_claim(EPOCH, EPOCH_SECS, a);
    assert_eq!(audit(&w, &c), Ok(expected));
}

#[test]
fn five_percent_fabricated_entries_are_refused() {
    let w = world(u64::MAX, 4_000_000_000);
    let forger = SigningKey::from_bytes(&[66; 32]);
    let mut a = acks(&w, 5000, epoch_start_ms());
    for (i, (_, ack)) in a.iter_mut().enumerate() {
        if i % 20 == 0 {
            *ack = Ack::sign(&forger, ack.receipt.clone());
        }
    }
    let c = build_claim(EPOCH, EPOCH_SECS, a);
    let err = audit(&w, &c).unwrap_err();
    assert!(err.to_string().contains("session key"), "{err}");
}

#[test]
fn tampered_receipt_is_refused() {
    let w = world(u64::MAX, 4_000_000_000);
    let mut a = acks(&w, 100, epoch_start_ms());
    // The edge changes a receipt's byte count after the viewer signed it
    // (within the object, so only the viewer's signature can tell).
    // It seals the changed receipt itself, so only the ack's signature is
    // left to tell.
    let r = a[5].1.receipt.receipt.clone();
    let changed = w.edge.issue(
        r.token,
        r.content,
        &r.path,
        r.start,
        r.len ^ 1,
        r.time_ms,
        r.serial,
    );
    assert_ne!(changed.wire, a[5].1.receipt.wire);
    a[5].1.receipt = changed;
    let err = audit(&w, &build_claim(EPOCH, EPOCH_SECS, a)).unwrap_err();
    assert!(
        err.to_string().contains("signature does not verify"),
        "{err}"
    );
}

#[test]
fn merkle_path_that_does_not_verify_is_refused() {
    let w = world(u64::MAX, 4_000_000_000);
    let c = build_claim(EPOCH, EPOCH_SECS, acks(&w, 3000, epoch_start_ms()));
    let err = audit_claim(&w, &c.claim, |idx| {
        let mut o = c.open(idx).unwrap();
        let mut p = hex::decode(&o.proof).unwrap();
        p[0] ^= 1;
        o.proof = hex::encode(p);
        o
    })
    .unwrap_err();
    assert_eq!(err, AuditError::MerkleProof);
}

#[test]
fn replays_within_and_across_epochs_are_refused() {
    let w = world(u64::MAX, 4_000_000_000);
    let a = acks(&w, 50, epoch_start_ms());
    // Same epoch: one ack listed twice.
    let c = build_claim(EPOCH, EPOCH_SECS, a.clone());
    let mut claim = c.claim.clone();
    claim.entries.push(claim.entries[0].clone());
    claim.count += 1;
    claim.bytes += claim.entries[0].2;
    let err = audit_claim(&w, &claim, |i| c.open(i).unwrap()).unwrap_err();
    assert!(matches!(err, AuditError::Duplicate(_)), "{err}");
    // A later epoch: last epoch's acks claimed again.
    let later = build_claim(EPOCH + 1, EPOCH_SECS, a);
    let err = audit_claim(&w, &later.claim, |i| later.open(i).unwrap()).unwrap_err();
    assert!(err.to_string().contains("outside this epoch"), "{err}");
}

#[test]
fn expired_token_and_over_budget() {
    let expired = world(u64::MAX, EPOCH * EPOCH_SECS - 1);
    let c = build_claim(EPOCH, EPOCH_SECS, acks(&expired, 10, epoch_start_ms()));
    let err = audit(&expired, &c).unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");

    let small = world(5000, 4_000_000_000);
    let c = build_claim(EPOCH, EPOCH_SECS, acks(&small, 10, epoch_start_ms()));
    let hub_pk = small.hub.public().to_bytes();
    let checked =
        audit::check_claim(&c.claim, &small.edge.node(), |k| *k == hub_pk, u64::MAX).unwrap();
    let credit = audit::settle(&checked, &c.claim, |_| 1000, |_| false);
    assert_eq!(credit.bytes, 4000);
    assert!(
        credit.over_budget[0].contains("left of its budget"),
        "{:?}",
        credit.over_budget
    );
}

#[test]
fn one_entry_with_inflated_bytes_is_caught() {
    let w = world(u64::MAX, 4_000_000_000);
    let c = build_claim(EPOCH, EPOCH_SECS, acks(&w, 20_000, epoch_start_ms()));
    let mut claim = c.claim.clone();
    claim.entries[777].2 += claim.bytes; // doubles the claim with one entry
    claim.bytes *= 2;
    let err = audit_claim(&w, &claim, |i| c.open(i).unwrap()).unwrap_err();
    assert!(err.to_string().contains("listed bytes"), "{err}");
}

#[test]
fn a_renumbered_or_resent_log_earns_nothing_twice() {
    // The cheater: an edge that settled an epoch, then moves the same acks
    // into another epoch number (a new epoch length, a restart) or sends
    // its old log again, mixed with new acks.
    let w = world(u64::MAX, 4_000_000_000);
    let old = acks(&w, 40, epoch_start_ms());
    let hub_pk = w.hub.public().to_bytes();
    let first = build_claim(EPOCH, EPOCH_SECS, old.clone());
    let checked =
        audit::check_claim(&first.claim, &w.edge.node(), |k| *k == hub_pk, u64::MAX).unwrap();
    let paid = audit::settle(&checked, &first.claim, |_| 0, |_| false);
    assert_eq!(paid.bytes, first.claim.bytes);
    assert_eq!(paid.paid_now.len(), 40);
    let already: std::collections::HashSet<[u8; 16]> = paid.paid_now.into_iter().collect();

    let mut mixed = old;
    mixed.extend(acks(&w, 10, epoch_start_ms() + 1));
    let again = build_claim(EPOCH + 7, EPOCH_SECS, mixed);
    let checked =
        audit::check_claim(&again.claim, &w.edge.node(), |k| *k == hub_pk, u64::MAX).unwrap();
    let credit = audit::settle(&checked, &again.claim, |_| 0, |id| already.contains(id));
    let fresh: u64 = again.claim.bytes - first.claim.bytes;
    assert_eq!(credit.bytes, fresh, "only the 10 new acks earn");
    assert_eq!(credit.already_paid.len(), 40);
    assert_eq!(credit.paid_now.len(), 10);
}

/// Acks for receipts the edge signs as it likes: (path, content, length).
fn forged(w: &World, what: impl Fn(usize) -> (String, [u8; 16], u64)) -> Vec<(String, Ack)> {
    (0..200)
        .map(|i| {
            let (path, content, len) = what(i);
            let r = w.edge.issue(
                token_id(&w.token),
                content,
                &path,
                0,
                len,
                epoch_start_ms() + i as u64,
                i as u64,
            );
            (w.token.clone(), Ack::sign(&w.session, r))
        })
        .collect()
}

#[test]
fn receipts_must_name_published_content_and_real_ranges() {
    // The cheater: a self-dealing edge with a colluding viewer. Every
    // signature is genuine; what they sign is not.
    let w = world(u64::MAX, 4_000_000_000);
    type Receipts = Box<dyn Fn(usize) -> (String, [u8; 16], u64)>;
    let cases: [(&str, Receipts); 3] = [
        (
            "does not publish",
            Box::new(|i| (format!("/v/abc/720p/ghost{i}.m4s"), [3; 16], 1000)),
        ),
        (
            "content differs",
            Box::new(|i| (format!("/v/abc/720p/{i}.m4s"), [9; 16], 1000)),
        ),
        (
            "past the published object's end",
            Box::new(|i| (format!("/v/abc/720p/{i}.m4s"), [3; 16], 1_000_000_000)),
        ),
    ];
    for (why, what) in cases {
        let c = build_claim(EPOCH, EPOCH_SECS, forged(&w, what));
        let err = audit(&w, &c).unwrap_err();
        assert!(err.to_string().contains(why), "{why}: {err}");
        // Published objects never change nor go away: each is fraud.
        assert!(err.is_fraud(), "{why}: {err}");
    }
    // The honest edge, same objects: credited exactly.
    let c = build_claim(
        EPOCH,
        EPOCH_SECS,
        forged(&w, |i| {
            (format!("/v/abc/720p/{i}.m4s"), [3; 16], 1000 + i as u64)
        }),
    );
    assert_eq!(audit(&w, &c), Ok(c.claim.bytes));
}

#[test]
fn a_self_dealing_edge_earns_nothing_from_tokens_steered_elsewhere() {
    // The cheater: an edge that gets HUB tokens (free, for a public video)
    // steered to other edges, and acks them itself with the session keys.
    // Every signature is genuine; the token names someone else.
    let mut w = world(u64::MAX, 4_000_000_000);
    let steered_to = [NodeKey::from_seed([8; 32]).public().to_bytes()];
    let claims = TokenClaims {
        issuer: w.hub.public().to_bytes(),
        prefix: "/v/abc/".into(),
        expires: 4_000_000_000,
        budget: u64::MAX,
        session: w.session.verifying_key().to_bytes(),
        edges: steered_to.to_vec(),
    };
    w.token = token::issue(&w.hub, &claims, 0).unwrap();
    let c = build_claim(EPOCH, EPOCH_SECS, acks(&w, 100, epoch_start_ms()));
    let err = audit(&w, &c).unwrap_err();
    assert!(matches!(err, AuditError::Token { .. }), "{err}");
    assert!(err.to_string().contains("other edges"), "{err}");
    assert!(
        err.is_fraud(),
        "no honest edge serves a token steered elsewhere"
    );

    // The edge the HUB chose, same token: credited exactly.
    w.edge = ReceiptSealer::new(NodeKey::from_seed([8; 32]));
    let c = build_claim(EPOCH, EPOCH_SECS, acks(&w, 100, epoch_start_ms()));
    assert_eq!(audit(&w, &c), Ok(c.claim.bytes));
}

#[test]
fn only_what_an_honest_edge_cannot_do_is_fraud() {
    assert!(!AuditError::FutureEpoch(3).is_fraud(), "clock skew");
    let withdrawn = AuditError::Token {
        index: 0,
        error: token::TokenError::UnknownIssuer("owner".into()),
    };
    assert!(!withdrawn.is_fraud(), "an owner's key withdrawn since");
    assert!(AuditError::MerkleProof.is_fraud());
    assert!(AuditError::Rechallenged(3).is_fraud());
}

#[test]
fn the_hubs_own_limit_caps_a_token_below_its_budget() {
    // The token says 1 TB; the HUB knows its video justifies 3 000 bytes.
    let w = world(1 << 40, 4_000_000_000);
    let c = build_claim(EPOCH, EPOCH_SECS, acks(&w, 10, epoch_start_ms()));
    let hub_pk = w.hub.public().to_bytes();
    let mut checked =
        audit::check_claim(&c.claim, &w.edge.node(), |k| *k == hub_pk, u64::MAX).unwrap();
    checked.limit(0, 3000);
    checked.limit(0, 1 << 50); // raising it again does nothing
    let credit = audit::settle(&checked, &c.claim, |_| 1000, |_| false);
    assert_eq!(credit.bytes, 2000, "3 000 in all, 1 000 already credited");
    assert!(!credit.over_budget.is_empty());
}

#[test]
fn a_token_the_hub_does_not_trust_costs_only_its_own_entries() {
    // An edge trusting an issuer the HUB does not (its own static issuer,
    // or an owner key withdrawn since) serves and lists that token's acks
    // beside honest viewers': the honest bytes are paid exactly, the
    // stranger's earn nothing, and the claim is neither refused nor fraud.
    let w = world(u64::MAX, 4_000_000_000);
    let honest = acks(&w, 300, epoch_start_ms());
    let honest_bytes: u64 = honest.iter().map(|(_, a)| a.receipt.receipt.len).sum();
    let stranger = NodeKey::from_seed([77; 32]);
    let viewer = SigningKey::from_bytes(&[78; 32]);
    let claims = TokenClaims {
        issuer: stranger.public().to_bytes(),
        prefix: "/v/abc/".into(),
        expires: 4_000_000_000,
        budget: u64::MAX,
        session: viewer.verifying_key().to_bytes(),
        edges: Vec::new(),
    };
    let minted = token::issue(&stranger, &claims, 0).unwrap();
    let with_minted = |signer: &SigningKey| {
        let mut all = honest.clone();
        for i in 0..200u64 {
            let r = w.edge.issue(
                token_id(&minted),
                [3; 16],
                &format!("/v/abc/720p/{i}.m4s"),
                0,
                1000 + i,
                epoch_start_ms() + 500 + i,
                1000 + i,
            );
            all.push((minted.clone(), Ack::sign(signer, r)));
        }
        build_claim(EPOCH, EPOCH_SECS, all)
    };
    let c = with_minted(&viewer);
    let (bytes, unpaid) = audit_with_reasons(&w, &c.claim, |i| c.open(i).unwrap()).unwrap();
    assert_eq!(bytes, honest_bytes, "exactly the honest viewers' bytes");
    assert_eq!(unpaid.len(), 1, "{unpaid:?}");
    assert!(unpaid[0].contains("not trusted"), "{unpaid:?}");

    // Its entries are still opened and checked: acks its session key did
    // not sign are refused, and as fraud.
    let c = with_minted(&SigningKey::from_bytes(&[79; 32]));
    let err = audit_with_reasons(&w, &c.claim, |i| c.open(i).unwrap()).unwrap_err();
    assert!(err.to_string().contains("session key"), "{err}");
    assert!(err.is_fraud(), "{err}");
}

#[test]
fn an_owner_key_earns_nothing_outside_its_own_video() {
    // The HUB knows the owner's key, but only for /v/other/: the owner and
    // an edge colluding to bill /v/abc/ (another owner's video) with it
    // earn nothing, and the honest hub-token viewers beside them are paid.
    let w = world(u64::MAX, 4_000_000_000);
    let honest = acks(&w, 300, epoch_start_ms());
    let honest_bytes: u64 = honest.iter().map(|(_, a)| a.receipt.receipt.len).sum();
    let owner = NodeKey::from_seed([88; 32]);
    let viewer = SigningKey::from_bytes(&[89; 32]);
    let claims = TokenClaims {
        issuer: owner.public().to_bytes(),
        prefix: "/v/abc/".into(),
        expires: 4_000_000_000,
        budget: u64::MAX,
        session: viewer.verifying_key().to_bytes(),
        edges: Vec::new(),
    };
    let foreign = token::issue(&owner, &claims, 0).unwrap();
    let mut all = honest;
    for i in 0..100u64 {
        let r = w.edge.issue(
            token_id(&foreign),
            [3; 16],
            &format!("/v/abc/720p/{i}.m4s"),
            0,
            1000 + i,
            epoch_start_ms() + 700 + i,
            5000 + i,
        );
        all.push((foreign.clone(), Ack::sign(&viewer, r)));
    }
    let c = build_claim(EPOCH, EPOCH_SECS, all);
    let (hub_pk, owner_pk) = (w.hub.public().to_bytes(), owner.public().to_bytes());
    let now_ms = epoch_start_ms() + 2 * EPOCH_SECS * 1000;
    let known = |k: &[u8; 32]| *k == hub_pk || *k == owner_pk;
    let mut checked = audit::check_claim(&c.claim, &w.edge.node(), known, now_ms).unwrap();
    checked
        .void_unless_allowed(|issuer, prefix| *issuer == hub_pk || prefix.starts_with("/v/other/"));
    let bytes = serde_json::to_vec(&c.claim).unwrap();
    let idx = audit::challenge(&bytes, &NONCE, &c.claim);
    audit::check_proof(
        &c.claim,
        &checked,
        &w.edge.node(),
        &idx,
        &c.open(&idx).unwrap(),
        catalog,
    )
    .unwrap();
    let credit = audit::settle(&checked, &c.claim, |_| 0, |_| false);
    assert_eq!(credit.bytes, honest_bytes);
    assert_eq!(credit.over_budget.len(), 1, "{:?}", credit.over_budget);
    assert!(credit.over_budget[0].contains("may not issue tokens for /v/abc/"));
}

/// An MR3 receipt, the layout edges issued before MR4 and the HUB still
/// reads. The HUB never sees an edge's seal, so a cheating edge can write
/// these as it likes: zeros stand in for it.
fn mr3_ack(w: &World, node: [u8; 32], content: [u8; 32], i: u64) -> (String, Ack) {
    let path = format!("/v/abc/720p/{i}.m4s");
    let mut b = b"MR3".to_vec();
    b.extend_from_slice(&node);
    b.extend_from_slice(&token_id(&w.token));
    b.extend_from_slice(&content);
    for n in [epoch_start_ms() + i, i, 0, 1000 + i] {
        b.extend_from_slice(&n.to_be_bytes());
    }
    b.extend_from_slice(&(path.len() as u16).to_be_bytes());
    b.extend_from_slice(path.as_bytes());
    b.extend_from_slice(&[0; 16]);
    let r = SealedReceipt::decode(&b).unwrap();
    (w.token.clone(), Ack::sign(&w.session, r))
}

/// `[3; 16]` (the catalog's content id) then what MR3 carried beyond it.
fn mr3_content(first: u8, tail: u8) -> [u8; 32] {
    let mut c = [tail; 32];
    c[..16].copy_from_slice(&[first; 16]);
    c
}

#[test]
fn mr3_receipts_after_the_upgrade_meet_the_same_audit() {
    let w = world(u64::MAX, 4_000_000_000);
    let node = w.edge.node();
    let honest: Vec<_> = (0..200)
        .map(|i| mr3_ack(&w, node, mr3_content(3, 0), i))
        .collect();
    let expected: u64 = honest.iter().map(|(_, a)| a.receipt.receipt.len).sum();
    let c = build_claim(EPOCH, EPOCH_SECS, honest);
    assert_eq!(
        audit(&w, &c),
        Ok(expected),
        "acks logged before the upgrade"
    );

    // The cheater writes MR3 because the HUB still reads it: other
    // content, or another edge's name, are refused as they are in MR4.
    let other = NodeKey::from_seed([5; 32]).public().to_bytes();
    for (why, named, content) in [
        ("content differs", node, mr3_content(9, 0)),
        ("another node", other, mr3_content(3, 0)),
    ] {
        let acks = (0..200).map(|i| mr3_ack(&w, named, content, i)).collect();
        let err = audit(&w, &build_claim(EPOCH, EPOCH_SECS, acks)).unwrap_err();
        assert!(err.to_string().contains(why), "{why}: {err}");
    }

    // An edge and a viewer who collude can give one delivery many receipt
    // ids: MR3 twins of MR4 receipts (the bytes MR3 has beyond MR4's
    // content id are free to vary), as with new serials. What bounds them
    // is the token's budget, which twins spend like any receipt.
    let budget: u64 = (0..100).map(|i| 1000 + i).sum();
    let w = world(budget, 4_000_000_000);
    let mut all = acks(&w, 100, epoch_start_ms());
    for tail in [1, 2] {
        all.extend((0..100).map(|i| mr3_ack(&w, w.edge.node(), mr3_content(3, tail), i)));
    }
    let c = build_claim(EPOCH, EPOCH_SECS, all);
    let (credited, over) = audit_with_reasons(&w, &c.claim, |idx| c.open(idx).unwrap()).unwrap();
    assert_eq!(credited, budget, "three receipts per delivery, paid once");
    assert_eq!(over.len(), 1, "one token went over: {over:?}");
    assert!(over[0].contains("left of its budget"), "{over:?}");
}
