//! What a viewer's browser sends a node over WebRTC: data-channel frames
//! and the STUN binding packets the node answers. No panic on any input;
//! a frame that decodes encodes back to itself.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use meshcast_control::rtc::{stun, Frame};
use std::net::SocketAddr;

#[derive(Arbitrary, Debug)]
enum Valid {
    Body(Vec<u8>),
    Error(String),
    End,
    Cancel,
}

fn check(msg: &[u8]) {
    if let Ok((id, frame)) = Frame::decode(msg) {
        if !matches!(&frame, Frame::Body(b) if b.len() > meshcast_control::rtc::MAX_CHUNK) {
            assert_eq!(Frame::decode(&frame.encode(id)), Ok((id, frame)));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    let trans = [7u8; 12];
    let mapped: SocketAddr = "203.0.113.9:40000".parse().expect("an address");
    let _ = stun::mapped_address(data, trans);
    let _ = stun::binding_success(data, mapped);
    let mut u = Unstructured::new(data);
    let Ok(v) = Valid::arbitrary(&mut u) else {
        return;
    };
    let frame = match v {
        Valid::Body(mut b) => {
            b.truncate(meshcast_control::rtc::MAX_CHUNK);
            Frame::Body(b.into())
        }
        Valid::Error(why) => Frame::Error(why),
        Valid::End => Frame::End,
        Valid::Cancel => Frame::Cancel,
    };
    check(&meshcast_fuzz::mutate(frame.encode(42), &mut u));
    let request = stun::binding_request(trans);
    let success = stun::binding_success(&request, mapped).expect("a binding request is answered");
    assert_eq!(stun::mapped_address(&success, trans), Some(mapped));
    let _ = stun::binding_success(&meshcast_fuzz::mutate(request.to_vec(), &mut u), mapped);
    let _ = stun::mapped_address(&meshcast_fuzz::mutate(success, &mut u), trans);
});
