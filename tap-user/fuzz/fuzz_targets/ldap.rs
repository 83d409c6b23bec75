//! LDAP PDU decoding (depth guard, ldap-parser, Sicily fallback, filter rendering) and the
//! TCP framer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tap_user::proto::ldap;

fuzz_target!(|data: &[u8]| {
    let _ = ldap::parse_pdu(data);
    let mut framer = ldap::TcpFramer::default();
    for chunk in data.chunks(53) {
        framer.push(chunk, &mut |f| {
            if let ldap::Frame::Pdu(p) = f {
                let _ = ldap::parse_pdu(p);
            }
        });
    }
});
