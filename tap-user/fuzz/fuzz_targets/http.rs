//! HTTP message-head framing and authentication-token extraction, with gaps.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tap_user::proto::{http, ntlm};

fuzz_target!(|data: &[u8]| {
    let mut framer = http::HeadFramer::default();
    let mut heads = Vec::new();
    for (i, chunk) in data.chunks(37).enumerate() {
        if i % 7 == 6 {
            framer.gap();
        }
        framer.push(chunk, &mut |h| heads.push(h));
    }
    for h in heads {
        if let http::Head::Request { auth: Some(t), .. } | http::Head::Response { auth: Some(t), .. } = h {
            let _ = ntlm::find_message(&t);
        }
    }
});
