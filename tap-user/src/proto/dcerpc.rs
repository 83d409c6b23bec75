//! DCE/RPC connection-oriented PDUs (C706 chapter 12, MS-RPCE 2.2.2) over TCP and SMB
//! named pipes: binds (interface UUIDs), requests (opnums), responses and faults, and the
//! auth verifier (type, level, and any NTLM message in it). Stubs are never decoded: most
//! are sealed, and the interface and opnum are what the detections use (DCSync is
//! DRSGetNCChanges from a non-DC, whatever the stub says).
//!
//! ```text
//! header (16): vers(1)=5 | minor(1) | ptype(1) | flags(1) | drep(4) | frag_len(2) | auth_len(2) | call_id(4)
//! bind/alter (11/14): max_xmit(2) max_recv(2) assoc(4) n_ctx(1) pad(3) { ctx_id(2) n_ts(1) pad(1) uuid(16) ver(4) ts(20)*n }
//! request (0): alloc_hint(4) ctx_id(2) opnum(2) [object uuid(16)] stub
//! auth verifier (last 8 + auth_len bytes): type(1) level(1) pad_len(1) reserved(1) ctx(4) value
//! ```

use super::wire::{u16_at, u32_at};
use super::{
    framing::{Framed, Framer, Header, Start},
    kerberos, ntlm,
};

/// Contexts read from one bind (a client offers one to three).
const MAX_CONTEXTS: usize = 16;
/// Largest fragment accepted; Windows uses 5840 or 4280, big endpoints 64 KiB.
pub const MAX_FRAGMENT: usize = 64 << 10;

pub mod ptype {
    pub const REQUEST: u8 = 0;
    pub const RESPONSE: u8 = 2;
    pub const FAULT: u8 = 3;
    pub const BIND: u8 = 11;
    pub const BIND_ACK: u8 = 12;
    pub const ALTER_CONTEXT: u8 = 14;
    pub const AUTH3: u8 = 16;
}

/// Authentication level at which stubs are encrypted (RPC_C_AUTHN_LEVEL_PKT_PRIVACY).
pub const LEVEL_PRIVACY: u8 = 6;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Auth {
    pub auth_type: u8,
    pub level: u8,
    pub ntlm: Option<ntlm::NtlmMessage>,
    /// A Kerberos AP-REQ in the verifier (auth types 9 SPNEGO and 16 Kerberos).
    pub ap_req: Option<kerberos::KerberosMessage>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pdu {
    Bind { contexts: Vec<(u16, String)> },
    Request { context_id: u16, opnum: u16 },
    Response,
    Fault { status: u32 },
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub ptype: u8,
    /// PFC_FIRST_FRAG: the first fragment of a call (later ones carry the rest of its stub).
    pub first_fragment: bool,
    pub call_id: u32,
    pub pdu: Pdu,
    pub auth: Option<Auth>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DceRpcError {
    #[error("not a DCE/RPC connection-oriented PDU")]
    NotDceRpc,
    #[error("big-endian DCE/RPC is not decoded")]
    BigEndian,
    #[error("DCE/RPC PDU cut short or inconsistent")]
    Malformed,
}

/// An NDR UUID (first three fields little-endian) in its usual text form.
pub fn uuid_string(b: &[u8]) -> Option<String> {
    let b = b.get(..16)?;
    Some(format!(
        "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        u32_at(b, 0)?,
        u16_at(b, 4)?,
        u16_at(b, 6)?,
        b[8],
        b[9],
        b[10],
        b[11],
        b[12],
        b[13],
        b[14],
        b[15]
    ))
}

/// Whether `b` starts like any connection-oriented DCE/RPC PDU: how a connection to a
/// dynamic port is recognised, also when the capture begins after its bind. Version 5.0,
/// a known packet type, little-endian data representation and a fragment length that
/// fits leave little room for accidents.
pub fn looks_like_pdu(b: &[u8]) -> bool {
    if b.len() < 16 || b[0] != 5 || b[1] != 0 || b[2] > ptype::AUTH3 || b[4] != 0x10 {
        return false;
    }
    let frag_len = u16::from_le_bytes([b[8], b[9]]) as usize;
    let auth_len = u16::from_le_bytes([b[10], b[11]]) as usize;
    (16..=MAX_FRAGMENT).contains(&frag_len) && auth_len + 16 <= frag_len
}

/// Decodes one whole PDU (`frag_len` bytes).
pub fn parse_pdu(b: &[u8]) -> Result<Message, DceRpcError> {
    let bad = DceRpcError::Malformed;
    if b.len() < 16 || b[0] != 5 || b[1] > 1 {
        return Err(DceRpcError::NotDceRpc);
    }
    if b[4] & 0x10 == 0 {
        return Err(DceRpcError::BigEndian);
    }
    let ptype = b[2];
    let flags = b[3];
    let frag_len = u16_at(b, 8).ok_or(bad)? as usize;
    let auth_len = u16_at(b, 10).ok_or(bad)? as usize;
    let call_id = u32_at(b, 12).ok_or(bad)?;
    if frag_len < 16 || frag_len > b.len() {
        return Err(bad);
    }
    let b = &b[..frag_len];
    let auth = if auth_len > 0 {
        let at = frag_len.checked_sub(auth_len + 8).filter(|&a| a >= 16).ok_or(bad)?;
        let value = &b[at + 8..];
        Some(Auth {
            auth_type: b[at],
            level: b[at + 1],
            ntlm: ntlm::find_message(value),
            ap_req: kerberos::find_ap_req(value),
        })
    } else {
        None
    };
    let body = &b[16..];
    let pdu = match ptype {
        ptype::BIND | ptype::ALTER_CONTEXT => {
            let n = *body.get(8).ok_or(bad)? as usize;
            let mut contexts = Vec::with_capacity(n.min(MAX_CONTEXTS));
            let mut at = 12;
            for _ in 0..n.min(MAX_CONTEXTS) {
                let id = u16_at(body, at).ok_or(bad)?;
                let n_ts = *body.get(at + 2).ok_or(bad)? as usize;
                let uuid = uuid_string(body.get(at + 4..).ok_or(bad)?).ok_or(bad)?;
                contexts.push((id, uuid));
                at += 4 + 20 + 20 * n_ts;
            }
            Pdu::Bind { contexts }
        }
        ptype::REQUEST => Pdu::Request { context_id: u16_at(body, 4).ok_or(bad)?, opnum: u16_at(body, 6).ok_or(bad)? },
        ptype::RESPONSE => Pdu::Response,
        ptype::FAULT => Pdu::Fault { status: u32_at(body, 8).ok_or(bad)? },
        _ => Pdu::Other,
    };
    Ok(Message { ptype, first_fragment: flags & 0x01 != 0, call_id, pdu, auth })
}

/// The stub of a response PDU (after the 24 bytes of header and response fields, before
/// any auth trailer), or None for other PDUs.
pub fn response_stub(b: &[u8]) -> Option<&[u8]> {
    if b.len() < 24 || b[2] != ptype::RESPONSE {
        return None;
    }
    let frag_len = (u16_at(b, 8)? as usize).min(b.len());
    let auth_len = u16_at(b, 10)? as usize;
    let end = if auth_len > 0 { frag_len.checked_sub(auth_len + 8)? } else { frag_len };
    b.get(24..end)
}

/// The TCP endpoints in an `ept_map` response stub (C706 appendix L): each tower lists its
/// floors as (lhs length, lhs, rhs length, rhs); an ncacn_ip_tcp tower has a TCP floor
/// (protocol 0x07, port big-endian) followed by an IP floor (protocol 0x09, address).
/// Searched for as that fixed 16-byte pattern rather than by walking NDR pointers: the
/// pattern cannot occur by accident in the short, structured EPM reply.
pub fn epm_tcp_endpoints(stub: &[u8]) -> Vec<(std::net::Ipv4Addr, u16)> {
    let mut out = Vec::new();
    for w in stub.windows(16) {
        if let [0x01, 0x00, 0x07, 0x02, 0x00, p1, p2, 0x01, 0x00, 0x09, 0x04, 0x00, a, b, c, d] = *w {
            let port = u16::from_be_bytes([p1, p2]);
            let ip = std::net::Ipv4Addr::new(a, b, c, d);
            if port != 0 && !out.contains(&(ip, port)) {
                out.push((ip, port));
            }
        }
    }
    out
}

/// The NDR transfer syntaxes, which fill a tower's second floor (C706 appendix I).
const TRANSFER_SYNTAXES: [&str; 2] = ["8a885d04-1ceb-11c9-9fe8-08002b104860", "71710533-beba-4937-8319-b5dbef9ccc36"];

/// The (interface UUID, TCP port) pairs of the towers in an endpoint-mapper reply: each
/// tower's first floor names its interface (protocol id 0x0d, then the UUID), its fourth
/// the port. Pairs with no UUID floor before their port are left out.
pub fn epm_tcp_interfaces(stub: &[u8]) -> Vec<(String, u16)> {
    let mut out = Vec::new();
    let mut interface: Option<String> = None;
    let mut i = 0;
    while i + 16 <= stub.len() {
        // A UUID floor: LHS length 19, protocol id 0x0d, UUID, major version.
        if stub[i..].starts_with(&[0x13, 0x00, 0x0d]) {
            if let Some(uuid) = stub.get(i + 3..i + 19).and_then(uuid_string) {
                if !TRANSFER_SYNTAXES.contains(&uuid.as_str()) {
                    interface = Some(uuid);
                }
                i += 19;
                continue;
            }
        }
        if let [0x01, 0x00, 0x07, 0x02, 0x00, p1, p2, ..] = stub[i..] {
            let port = u16::from_be_bytes([p1, p2]);
            if let Some(uuid) = interface.take().filter(|_| port != 0) {
                if !out.iter().any(|(u, p)| *u == uuid && *p == port) {
                    out.push((uuid, port));
                }
            }
            i += 7;
            continue;
        }
        i += 1;
    }
    out
}

/// Splits a byte stream (TCP, or the data of one named pipe) into PDUs by `frag_len`.
#[derive(Debug, Default)]
pub struct StreamFramer(Framer);

fn header(b: &[u8]) -> Header {
    if b.len() < 16 {
        return Header::Incomplete;
    }
    let len = u16::from_le_bytes([b[8], b[9]]) as usize;
    if b[0] != 5 || len < 16 {
        return Header::Broken;
    }
    Header::Record { header: 0, total: len }
}

/// After a gap: the next PDU header (`looks_like_pdu`).
fn starts(b: &[u8]) -> Start {
    match b {
        _ if b.len() < 16 => {
            if b.first().is_none_or(|v| *v == 5) {
                Start::NeedMore
            } else {
                Start::No
            }
        }
        _ if looks_like_pdu(b) => Start::Yes,
        _ => Start::No,
    }
}

impl StreamFramer {
    pub fn push(&mut self, data: &[u8], pdu: &mut dyn FnMut(&[u8])) {
        let mut oversized = false;
        self.0.push(data, MAX_FRAGMENT, header, starts, &mut |f| match f {
            Framed::Record { whole, .. } => pdu(whole),
            _ => oversized = true,
        });
        // A fragment over the limit is not DCE/RPC as any endpoint sends it: its end is
        // not trusted, and framing resumes at the next PDU header.
        if oversized {
            self.0.gap();
        }
    }

    pub fn gap(&mut self) {
        self.0.gap();
    }

    pub fn lost(&self) -> bool {
        self.0.lost()
    }
}

/// Interfaces the detections care about (MS-DRSR, MS-SAMR, MS-LSAD/LSAT, MS-NRPC, C706
/// EPM, MS-SRVS, MS-SCMR, MS-EFSR, MS-RPRN, MS-TSCH, MS-WMI).
pub fn interface_name(uuid: &str) -> Option<&'static str> {
    Some(match uuid {
        "e3514235-4b06-11d1-ab04-00c04fc2dcd2" => "drsuapi",
        // MS-DNSP: DNS server management (records added by a DC joining, by admins).
        "50abc2a4-574d-40b3-9d66-ee4fd5fba076" => "dnsserver",
        "12345778-1234-abcd-ef00-0123456789ac" => "samr",
        "12345778-1234-abcd-ef00-0123456789ab" => "lsarpc",
        "12345678-1234-abcd-ef00-01234567cffb" => "netlogon",
        "e1af8308-5d1f-11c9-91a4-08002b14a0fa" => "epm",
        "4b324fc8-1670-01d3-1278-5a47bf6ee188" => "srvsvc",
        "367abb81-9844-35f1-ad32-98f038001003" => "svcctl",
        "c681d488-d850-11d0-8c52-00c04fd90f7e" | "df1941c5-fe89-4e79-bf10-463657acf44d" => "efsrpc",
        "12345678-1234-abcd-ef00-0123456789ab" => "spoolss",
        "1ff70682-0a51-30e8-076d-740be8cee98b" => "atsvc",
        "86d35949-83c9-4044-b424-db363231fd0c" => "tsch",
        // DCOM activation and WMI (MS-DCOM 3.1.2.5.2.3, MS-WMI 3.1.4): how wmiexec and
        // Invoke-WmiMethod start a process on a remote host.
        "000001a0-0000-0000-c000-000000000046" => "isystemactivator",
        "f309ad18-d86a-11d0-a075-00c04fb68820" => "iwbemlevel1login",
        "9556dc99-828c-11cf-a37e-00aa003240c7" => "iwbemservices",
        "8bc3f05e-d86b-11d0-a075-00c04fb68820" => "wmi_login",
        "6bffd098-a112-3610-9833-46c3f87e345a" => "wkssvc",
        _ => return None,
    })
}

/// Names of the operations the detections look at; others are reported by number.
pub fn operation_name(interface: &str, opnum: u16) -> Option<&'static str> {
    Some(match (interface, opnum) {
        ("drsuapi", 0) => "DRSBind",
        ("drsuapi", 1) => "DRSUnbind",
        ("drsuapi", 2) => "DRSReplicaSync",
        ("drsuapi", 3) => "DRSGetNCChanges",
        ("drsuapi", 4) => "DRSUpdateRefs",
        ("drsuapi", 5) => "DRSReplicaAdd",
        ("drsuapi", 6) => "DRSReplicaDel",
        ("drsuapi", 14) => "DRSRemoveDsServer",
        ("drsuapi", 12) => "DRSCrackNames",
        ("drsuapi", 16) => "DRSDomainControllerInfo",
        ("drsuapi", 17) => "DRSAddEntry",
        ("samr", 0) => "SamrConnect",
        ("samr", 5) => "SamrLookupDomainInSamServer",
        ("samr", 6) => "SamrEnumerateDomainsInSamServer",
        ("samr", 7) => "SamrOpenDomain",
        ("samr", 11) => "SamrEnumerateGroupsInDomain",
        ("samr", 13) => "SamrEnumerateUsersInDomain",
        ("samr", 15) => "SamrEnumerateAliasesInDomain",
        ("samr", 17) => "SamrLookupNamesInDomain",
        ("samr", 25) => "SamrGetMembersInGroup",
        ("samr", 33) => "SamrGetMembersInAlias",
        ("samr", 34) => "SamrOpenUser",
        ("samr", 36) => "SamrQueryInformationUser",
        ("samr", 64) => "SamrConnect5",
        ("lsarpc", 6) => "LsarOpenPolicy",
        ("lsarpc", 7) => "LsarQueryInformationPolicy",
        ("lsarpc", 14) => "LsarLookupNames",
        ("lsarpc", 15) => "LsarLookupSids",
        ("lsarpc", 44) => "LsarOpenPolicy2",
        ("lsarpc", 57) => "LsarLookupSids2",
        ("lsarpc", 76) => "LsarLookupSids3",
        ("netlogon", 4) => "NetrServerReqChallenge",
        ("netlogon", 15) => "NetrServerAuthenticate2",
        ("netlogon", 26) => "NetrServerAuthenticate3",
        ("netlogon", 30) => "NetrServerPasswordSet2",
        ("epm", 3) => "ept_map",
        ("srvsvc", 12) => "NetrSessionEnum",
        ("srvsvc", 15) => "NetrShareEnum",
        ("svcctl", 0) => "RCloseServiceHandle",
        ("svcctl", 1) => "RControlService",
        ("svcctl", 2) => "RDeleteService",
        ("svcctl", 6) => "RQueryServiceStatus",
        ("svcctl", 11) => "RChangeServiceConfigW",
        ("svcctl", 12) => "RCreateServiceW",
        ("svcctl", 15) => "ROpenSCManagerW",
        ("svcctl", 16) => "ROpenServiceW",
        ("svcctl", 19) => "RStartServiceW",
        ("svcctl", 23) => "RChangeServiceConfigA",
        ("svcctl", 24) => "RCreateServiceA",
        ("svcctl", 31) => "RStartServiceA",
        // A service record on a 64-bit host (the PsExec run of suricata-verify's capture).
        ("svcctl", 44) => "RCreateServiceWOW64A",
        ("svcctl", 45) => "RCreateServiceWOW64W",
        ("efsrpc", 0) => "EfsRpcOpenFileRaw",
        ("efsrpc", 4) => "EfsRpcEncryptFileSrv",
        ("spoolss", 65) => "RpcRemoteFindFirstPrinterChangeNotificationEx",
        ("spoolss", 69) => "RpcOpenPrinterEx",
        ("atsvc", 0) => "NetrJobAdd",
        ("isystemactivator", 4) => "RemoteCreateInstance",
        ("iwbemlevel1login", 6) => "NTLMLogin",
        ("iwbemservices", 24) => "ExecMethod",
        ("iwbemservices", 25) => "ExecMethodAsync",
        ("tsch", 1) => "SchRpcRegisterTask",
        _ => return None,
    })
}

/// The event category of a call: what the detections group it under.
pub fn category(interface: &str, opnum: u16) -> &'static str {
    match (interface, opnum) {
        ("drsuapi", 3 | 5 | 17) => "directory_operation",
        ("netlogon", 30) => "directory_operation",
        ("netlogon", _) => "logon",
        // Creating, reconfiguring or starting a service, in any of its variants.
        ("svcctl", 11 | 12 | 19 | 23 | 24 | 31 | 44 | 45) | ("atsvc", 0) | ("tsch", 1) => "remote_execution",
        // A WMI method call (Win32_Process.Create) is remote execution; logging on to WMI
        // is the step before it.
        ("iwbemservices", 24 | 25) | ("iwbemlevel1login", 6) => "remote_execution",
        ("samr" | "lsarpc" | "srvsvc" | "epm" | "drsuapi" | "wkssvc", _) => "query",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bind to SAMR as rpcclient sends it (one context, NDR transfer syntax).
    fn samr_bind() -> Vec<u8> {
        let mut b = vec![5, 0, 11, 3, 0x10, 0, 0, 0, 72, 0, 0, 0, 1, 0, 0, 0];
        b.extend([0xb8, 0x10, 0xb8, 0x10, 0, 0, 0, 0, 1, 0, 0, 0]);
        b.extend([0, 0, 1, 0]);
        b.extend([0x78, 0x57, 0x34, 0x12, 0x34, 0x12, 0xcd, 0xab, 0xef, 0x00, 0x01, 0x23, 0x45, 0x67, 0x89, 0xac]);
        b.extend([1, 0, 0, 0]);
        b.extend([
            0x04, 0x5d, 0x88, 0x8a, 0xeb, 0x1c, 0xc9, 0x11, 0x9f, 0xe8, 0x08, 0x00, 0x2b, 0x10, 0x48, 0x60, 2, 0, 0, 0,
        ]);
        b
    }

    #[test]
    fn bind_names_the_interface() {
        let m = parse_pdu(&samr_bind()).unwrap();
        let Pdu::Bind { contexts } = &m.pdu else { panic!("{m:?}") };
        assert_eq!(contexts[0].1, "12345778-1234-abcd-ef00-0123456789ac");
        assert_eq!(interface_name(&contexts[0].1), Some("samr"));
        assert!(looks_like_pdu(&samr_bind()));
        assert!(!looks_like_pdu(b"GET / HTTP/1.1\r\nHost: x\r\n"));
    }

    #[test]
    fn request_opnum_and_auth_verifier() {
        // DRSGetNCChanges at privacy level with an NTLMSSP verifier (auth value abridged).
        let mut b = vec![5, 0, 0, 3, 0x10, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0];
        b.extend([0, 0, 0, 0, 0, 0, 3, 0]);
        b.extend([0u8; 8]); // stub
        b.extend([10, 6, 0, 0, 0, 0, 0, 0]);
        let auth_value = [1u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        b.extend(auth_value);
        let len = b.len() as u16;
        b[8..10].copy_from_slice(&len.to_le_bytes());
        b[10..12].copy_from_slice(&(auth_value.len() as u16).to_le_bytes());
        let m = parse_pdu(&b).unwrap();
        assert_eq!(m.pdu, Pdu::Request { context_id: 0, opnum: 3 });
        let auth = m.auth.unwrap();
        assert_eq!((auth.auth_type, auth.level), (10, LEVEL_PRIVACY));
        assert_eq!(operation_name("drsuapi", 3), Some("DRSGetNCChanges"));
        assert_eq!(category("drsuapi", 3), "directory_operation");
    }

    /// Every way to create, reconfigure or start a service is remote execution: PsExec
    /// (suricata-verify's psexec capture) creates its service with RCreateServiceWOW64W.
    #[test]
    fn service_creation_variants_are_remote_execution() {
        for (opnum, name) in [
            (11, "RChangeServiceConfigW"),
            (12, "RCreateServiceW"),
            (24, "RCreateServiceA"),
            (44, "RCreateServiceWOW64A"),
            (45, "RCreateServiceWOW64W"),
            (31, "RStartServiceA"),
        ] {
            assert_eq!(operation_name("svcctl", opnum), Some(name));
            assert_eq!(category("svcctl", opnum), "remote_execution", "{name}");
        }
        assert_eq!(category("svcctl", 0), "other");
        // WMI over DCOM: the login and the method call, by interface UUID.
        for (uuid, name, opnum, op) in [
            ("f309ad18-d86a-11d0-a075-00c04fb68820", "iwbemlevel1login", 6, "NTLMLogin"),
            ("9556dc99-828c-11cf-a37e-00aa003240c7", "iwbemservices", 24, "ExecMethod"),
        ] {
            assert_eq!(interface_name(uuid), Some(name));
            assert_eq!(operation_name(name, opnum), Some(op));
            assert_eq!(category(name, opnum), "remote_execution");
        }
        assert_eq!(category("isystemactivator", 4), "other", "DCOM activation alone is everyday admin work");
    }

    /// A tower as Windows and Samba send it in an ept_map reply: interface floor (DRSUAPI
    /// 4.0), NDR floor, connection-oriented RPC, TCP port 49667, IP.
    #[test]
    fn epm_reply_names_the_interface_of_its_port() {
        let drsuapi =
            [0x35u8, 0x42, 0x51, 0xe3, 0x06, 0x4b, 0xd1, 0x11, 0xab, 0x04, 0x00, 0xc0, 0x4f, 0xc2, 0xdc, 0xd2];
        let ndr = [0x04u8, 0x5d, 0x88, 0x8a, 0xeb, 0x1c, 0xc9, 0x11, 0x9f, 0xe8, 0x08, 0x00, 0x2b, 0x10, 0x48, 0x60];
        let mut stub = vec![0u8; 28];
        stub.extend([0x05, 0x00]);
        for (uuid, major) in [(drsuapi, 4u16), (ndr, 2)] {
            stub.extend([0x13, 0x00, 0x0d]);
            stub.extend(uuid);
            stub.extend(major.to_le_bytes());
            stub.extend([0x02, 0x00, 0x00, 0x00]);
        }
        stub.extend([0x01, 0x00, 0x0b, 0x02, 0x00, 0x00, 0x00]);
        stub.extend([0x01, 0x00, 0x07, 0x02, 0x00, 0xc2, 0x03, 0x01, 0x00, 0x09, 0x04, 0x00, 10, 0, 0, 10]);
        stub.extend([0u8; 8]);
        let got = epm_tcp_interfaces(&stub);
        assert_eq!(got, vec![("e3514235-4b06-11d1-ab04-00c04fc2dcd2".to_string(), 49667)]);
        assert_eq!(interface_name(&got[0].0), Some("drsuapi"));
        assert!(epm_tcp_interfaces(&stub[40..]).is_empty(), "a port without its interface floor");
        for cut in 0..stub.len() {
            let _ = epm_tcp_interfaces(&stub[..cut]);
        }
    }

    #[test]
    fn epm_reply_yields_its_tcp_endpoint() {
        // Floors 4 and 5 of a tower for 10.0.0.10 port 49667, inside some NDR around it.
        let mut stub = vec![0u8; 40];
        stub.extend([0x01, 0x00, 0x07, 0x02, 0x00, 0xc2, 0x03, 0x01, 0x00, 0x09, 0x04, 0x00, 10, 0, 0, 10]);
        stub.extend([0u8; 8]);
        assert_eq!(epm_tcp_endpoints(&stub), vec![("10.0.0.10".parse().unwrap(), 49667)]);
        assert!(epm_tcp_endpoints(&[0u8; 64]).is_empty());
        let mut resp = vec![5, 0, 2, 3, 0x10, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0];
        resp.extend([0u8; 8]);
        resp.extend(&stub);
        let len = resp.len() as u16;
        resp[8..10].copy_from_slice(&len.to_le_bytes());
        assert_eq!(response_stub(&resp), Some(&stub[..]));
    }

    #[test]
    fn bad_lengths_and_other_protocols() {
        assert_eq!(parse_pdu(b"\xfeSMB0123456789abcdef"), Err(DceRpcError::NotDceRpc));
        let mut b = samr_bind();
        b[10] = 200; // auth_len beyond the PDU
        assert_eq!(parse_pdu(&b), Err(DceRpcError::Malformed));
        let b = samr_bind();
        for cut in 0..b.len() {
            let _ = parse_pdu(&b[..cut]);
        }
        let mut f = StreamFramer::default();
        let mut n = 0;
        let mut two = samr_bind();
        two.extend(samr_bind());
        for c in two.chunks(5) {
            f.push(c, &mut |_| n += 1);
        }
        assert_eq!(n, 2);
    }
}
