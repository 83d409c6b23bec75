//! Kerberos message decoding, the TCP record framer, and the search for an AP-REQ in a
//! carrier's security blob.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tap_user::proto::kerberos;

fuzz_target!(|data: &[u8]| {
    let _ = kerberos::parse_message(data);
    let _ = kerberos::find_ap_req(data);
    let mut framer = kerberos::TcpFramer::default();
    let mut oversized = 0;
    for (i, chunk) in data.chunks(97).enumerate() {
        if i == 3 {
            framer.gap();
        }
        framer.push(chunk, &mut oversized, &mut |r| {
            let _ = kerberos::parse_message(r);
        });
    }
});
