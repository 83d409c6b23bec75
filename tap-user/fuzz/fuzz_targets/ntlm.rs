//! NTLM message decoding, bare and found inside a carrier blob.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tap_user::proto::ntlm;

fuzz_target!(|data: &[u8]| {
    let _ = ntlm::parse_message(data);
    let _ = ntlm::find_message(data);
});
