//! Viewer acks (a receipt and the session's signature over it), as the
//! edge's ack log and the HUB's claims carry them: no panic on any input,
//! and no changed ack verifies for the session that signed the original.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use meshcast_control::identity::NodeKey;
use meshcast_control::receipt::{verify_acks, Ack, ReceiptSealer};

#[derive(Arbitrary, Debug)]
struct Fields {
    token: [u8; 16],
    path: String,
    start: u64,
    len: u64,
    serial: u64,
}

fuzz_target!(|data: &[u8]| {
    if let Ok(a) = Ack::decode(data) {
        let _ = verify_acks(std::slice::from_ref(&a), &[[1; 32]]);
    }
    let mut u = Unstructured::new(data);
    let Ok(f) = Fields::arbitrary(&mut u) else {
        return;
    };
    let sealer = ReceiptSealer::new(NodeKey::from_seed([7; 32]));
    let receipt = sealer.issue(f.token, [3; 16], &f.path, f.start, f.len, 1_000, f.serial);
    let session = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let public = session.verifying_key().to_bytes();
    let valid = Ack::sign(&session, receipt);
    let bytes = meshcast_fuzz::mutate(valid.encode(), &mut u);
    let Ok(a) = Ack::decode(&bytes) else {
        assert_ne!(bytes, valid.encode(), "a signed ack does not decode");
        return;
    };
    let verified = verify_acks(std::slice::from_ref(&a), &[public]).is_ok();
    if bytes == valid.encode() {
        assert!(verified, "a signed ack does not verify");
    }
    if verified {
        assert_eq!(a, valid, "a changed ack verified");
    }
    assert_eq!(Ack::decode(&a.encode()).as_ref(), Ok(&a));
});
