//! DNS message decoding and the TCP length framer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tap_user::proto::dns;

fuzz_target!(|data: &[u8]| {
    let _ = dns::parse_message(data);
    let mut framer = dns::TcpFramer::default();
    for chunk in data.chunks(31) {
        framer.push(chunk, &mut |m| {
            let _ = dns::parse_message(m);
        });
    }
});
