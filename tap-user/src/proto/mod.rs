//! Protocol parsers: pure functions from bytes to typed messages. No I/O, no panics, no
//! allocation beyond what the input's own lengths justify (each bounded by a named limit).
#![forbid(unsafe_code)]

pub mod dcerpc;
pub mod dns;
pub mod framing;
pub mod http;
pub mod kerberos;
pub mod ldap;
pub mod ntlm;
pub mod smb1;
pub mod smb2;
pub mod wire;
