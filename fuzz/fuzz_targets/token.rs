//! Playback tokens (PASETO v4.public), as viewers present them to edges:
//! no panic on any input, and no changed token verifies with claims other
//! than those its issuer signed.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use meshcast_control::identity::NodeKey;
use meshcast_control::token::{self, TokenClaims};

#[derive(Arbitrary, Debug)]
struct Fields {
    prefix: String,
    expires: u32,
    budget: u64,
    session: [u8; 32],
    edges: Vec<[u8; 32]>,
    now: u32,
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = token::read_unverified(&text);
    let _ = token::issued_at(&text);
    let _ = token::verify(&text, |_| true, 0);
    let mut u = Unstructured::new(data);
    let Ok(f) = Fields::arbitrary(&mut u) else {
        return;
    };
    let key = NodeKey::from_seed([3; 32]);
    let issuer = key.public().to_bytes();
    let claims = TokenClaims {
        issuer,
        prefix: f.prefix,
        expires: u64::from(f.expires),
        budget: f.budget,
        session: f.session,
        edges: f.edges,
    };
    let now = u64::from(f.now);
    let Ok(valid) = token::issue(&key, &claims, now) else {
        return;
    };
    let bytes = meshcast_fuzz::mutate(valid.clone().into_bytes(), &mut u);
    let changed = String::from_utf8_lossy(&bytes);
    let _ = token::read_unverified(&changed);
    match token::verify(&changed, |k| *k == issuer, now) {
        Ok(got) => assert_eq!(got, claims, "a changed token verified"),
        Err(e) => assert!(
            changed != valid || claims.expires < now,
            "a token its issuer signed was refused: {e}"
        ),
    }
});
