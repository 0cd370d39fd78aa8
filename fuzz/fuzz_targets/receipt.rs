//! Delivery receipts, as an edge's `Meshcast-Receipt` header and as the
//! bytes inside acks: any input decodes or is refused without a panic, and
//! no change to a receipt the edge sealed still passes its seal.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use meshcast_control::identity::NodeKey;
use meshcast_control::receipt::{ReceiptSealer, SealedReceipt};

#[derive(Arbitrary, Debug)]
struct Fields {
    token: [u8; 16],
    content: [u8; 16],
    path: String,
    start: u64,
    len: u64,
    time_ms: u64,
    serial: u64,
}

fuzz_target!(|data: &[u8]| {
    let _ = SealedReceipt::decode(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = SealedReceipt::from_header(text);
    }
    let mut u = Unstructured::new(data);
    let Ok(f) = Fields::arbitrary(&mut u) else {
        return;
    };
    let sealer = ReceiptSealer::new(NodeKey::from_seed([7; 32]));
    let valid = sealer.issue(
        f.token, f.content, &f.path, f.start, f.len, f.time_ms, f.serial,
    );
    let wire = meshcast_fuzz::mutate(valid.wire.clone(), &mut u);
    let Ok(r) = SealedReceipt::decode(&wire) else {
        assert_ne!(
            wire, valid.wire,
            "a receipt the edge sealed does not decode"
        );
        return;
    };
    let ours = sealer.is_ours(&r).is_ok();
    if wire == valid.wire {
        assert!(ours, "a receipt the edge sealed does not pass its seal");
        assert_eq!(r.receipt, valid.receipt);
    }
    if ours {
        assert_eq!(
            r.wire, valid.wire,
            "a changed receipt passed the edge's seal"
        );
    }
    let again = SealedReceipt::from_header(&r.header_value()).expect("its own header decodes");
    assert_eq!(again.wire, r.wire);
});
