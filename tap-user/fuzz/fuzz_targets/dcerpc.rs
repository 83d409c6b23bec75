//! DCE/RPC PDU decoding (binds, requests, auth verifiers) and the fragment framer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tap_user::proto::dcerpc;

fuzz_target!(|data: &[u8]| {
    let _ = dcerpc::parse_pdu(data);
    let mut framer = dcerpc::StreamFramer::default();
    for chunk in data.chunks(41) {
        framer.push(chunk, &mut |p| {
            let _ = dcerpc::parse_pdu(p);
        });
    }
});
