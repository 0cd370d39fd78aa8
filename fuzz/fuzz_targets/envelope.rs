//! Signed envelopes, the form of every node-to-HUB message: no panic on
//! any input; no changed envelope verifies; the HUB's verifier takes an
//! envelope once and refuses it as a replay after.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use meshcast_control::envelope::{Envelope, EnvelopeError, Verifier};
use meshcast_control::identity::NodeKey;

#[derive(Arbitrary, Debug)]
struct Fields {
    domain: String,
    body: Vec<u8>,
    now: u32,
}

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = Envelope::decode(data) {
        let _ = e.verify_signature();
        let _ = Verifier::new(&e.domain, 300).verify(&e, e.timestamp);
    }
    let mut u = Unstructured::new(data);
    let Ok(f) = Fields::arbitrary(&mut u) else {
        return;
    };
    let now = u64::from(f.now);
    let key = NodeKey::from_seed([5; 32]);
    let Ok(valid) = Envelope::seal(&key, &f.domain, f.body, now) else {
        return;
    };
    let encoded = valid.encode();
    let bytes = meshcast_fuzz::mutate(encoded.clone(), &mut u);
    let Ok(e) = Envelope::decode(&bytes) else {
        assert_ne!(bytes, encoded, "a sealed envelope does not decode");
        return;
    };
    let signed = e.verify_signature().is_ok();
    if bytes == encoded {
        assert!(signed, "a sealed envelope does not verify");
    }
    if signed {
        assert_eq!(e, valid, "a changed envelope verified");
        let mut hub = Verifier::new(&f.domain, 300);
        assert!(hub.verify(&e, now).is_ok());
        assert_eq!(hub.verify(&e, now), Err(EnvelopeError::Replay));
    }
    assert_eq!(Envelope::decode(&e.encode()).as_ref(), Ok(&e));
});
