//! SMB2 unit decoding (chained messages, names at offsets) and the NetBIOS framer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tap_user::proto::smb2;

fuzz_target!(|data: &[u8]| {
    let _ = smb2::parse_unit(data);
    let mut framer = smb2::TcpFramer::default();
    for chunk in data.chunks(61) {
        framer.push(chunk, &mut |f| {
            if let smb2::Frame::Unit(u) = f {
                let _ = smb2::parse_unit(u);
            }
        });
    }
});
