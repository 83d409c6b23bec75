//! The words the sensor, the store, the exports and the portal share, as types: one
//! definition each instead of the same strings matched in several places.

/// How serious an alert is. Stored and sent as its name ([`Severity::as_str`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// A notice (a DC was added), below every alert.
    Info,
    Low,
    Medium,
    High,
}

impl Severity {
    pub const ALL: [Severity; 4] = [Severity::High, Severity::Medium, Severity::Low, Severity::Info];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
        }
    }

    /// The severity a stored or received name stands for; an unknown name is a notice, so
    /// it never outranks a real alert.
    pub fn parse(name: &str) -> Self {
        match name {
            "high" => Severity::High,
            "medium" => Severity::Medium,
            "low" => Severity::Low,
            _ => Severity::Info,
        }
    }

    /// CEF's 0-10 severity (ArcSight's bands: 0-3 low, 4-6 medium, 7-8 high).
    pub fn cef(self) -> u8 {
        match self {
            Severity::High => 8,
            Severity::Medium => 5,
            Severity::Low => 3,
            Severity::Info => 1,
        }
    }

    /// RFC 5424's severity level (2 critical, 4 warning, 6 informational).
    pub fn syslog_level(self) -> u8 {
        match self {
            Severity::High => 2,
            Severity::Medium | Severity::Low => 4,
            Severity::Info => 6,
        }
    }
}

/// A Kerberos encryption type (RFC 3961, 4757, 8009; the `etype` fields of the events).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EncryptionType(pub i32);

impl EncryptionType {
    pub const DES_CBC_CRC: Self = Self(1);
    pub const DES_CBC_MD5: Self = Self(3);
    pub const DES3_CBC_SHA1: Self = Self(16);
    pub const AES128_CTS_HMAC_SHA1: Self = Self(17);
    pub const AES256_CTS_HMAC_SHA1: Self = Self(18);
    pub const AES128_CTS_HMAC_SHA256: Self = Self(19);
    pub const AES256_CTS_HMAC_SHA384: Self = Self(20);
    pub const RC4_HMAC: Self = Self(23);
    pub const RC4_HMAC_EXP: Self = Self(24);
    pub const CAMELLIA128_CTS_CMAC: Self = Self(25);
    pub const CAMELLIA256_CTS_CMAC: Self = Self(26);

    /// The AES types every Windows client since 2008 offers first.
    pub fn is_aes(self) -> bool {
        (17..=20).contains(&self.0)
    }

    /// Its usual short name, when it has one.
    pub fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            1 => "DES-CBC-CRC",
            3 => "DES-CBC-MD5",
            16 => "3DES",
            17 => "AES128",
            18 => "AES256",
            19 => "AES128-SHA256",
            20 => "AES256-SHA384",
            23 => "RC4-HMAC",
            24 => "RC4-HMAC-EXP",
            25 => "Camellia128",
            26 => "Camellia256",
            _ => return None,
        })
    }
}

/// A KRB-ERROR's error code (RFC 4120 7.5.9; the events' `error_code`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KrbErrorCode(pub i32);

impl KrbErrorCode {
    pub const C_PRINCIPAL_UNKNOWN: Self = Self(6);
    pub const S_PRINCIPAL_UNKNOWN: Self = Self(7);
    pub const POLICY: Self = Self(12);
    pub const BADOPTION: Self = Self(13);
    pub const ETYPE_NOSUPP: Self = Self(14);
    pub const CLIENT_REVOKED: Self = Self(18);
    pub const KEY_EXPIRED: Self = Self(23);
    pub const PREAUTH_FAILED: Self = Self(24);
    pub const PREAUTH_REQUIRED: Self = Self(25);
    pub const RESPONSE_TOO_BIG: Self = Self(52);

    /// What it means, in words an analyst reads, when it is a common one.
    pub fn meaning(self) -> Option<&'static str> {
        Some(match self.0 {
            6 => "client unknown",
            7 => "service unknown",
            12 => "policy",
            13 => "bad option",
            14 => "encryption type not supported",
            18 => "client revoked (disabled or locked out)",
            23 => "password expired",
            24 => "pre-authentication failed (wrong password)",
            25 => "pre-authentication required",
            31 => "integrity check failed",
            32 => "ticket expired",
            37 => "clock skew too great",
            41 => "modified message",
            50 => "inappropriate checksum",
            52 => "response too big (retry over TCP)",
            60 => "generic",
            68 => "wrong realm",
            _ => return None,
        })
    }
}

/// A DNS resource record type (RFC 1035 and successors; the events' `qtype`, `rtype`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DnsType(pub u32);

impl DnsType {
    pub const A: Self = Self(1);
    pub const AAAA: Self = Self(28);
    pub const SRV: Self = Self(33);
    pub const IXFR: Self = Self(251);
    pub const AXFR: Self = Self(252);

    pub fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            1 => "A",
            2 => "NS",
            5 => "CNAME",
            6 => "SOA",
            12 => "PTR",
            15 => "MX",
            16 => "TXT",
            28 => "AAAA",
            33 => "SRV",
            251 => "IXFR",
            252 => "AXFR",
            255 => "ANY",
            256 => "URI",
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severities_order_name_and_read_back() {
        assert!(Severity::High > Severity::Medium && Severity::Low > Severity::Info);
        for s in Severity::ALL {
            assert_eq!(Severity::parse(s.as_str()), s);
        }
        assert_eq!(Severity::parse("catastrophic"), Severity::Info, "unknown names rank lowest");
        assert!(Severity::ALL.windows(2).all(|w| w[0].cef() > w[1].cef()));
    }

    #[test]
    fn protocol_values_are_named() {
        assert_eq!(EncryptionType::RC4_HMAC.name(), Some("RC4-HMAC"));
        assert!(EncryptionType::AES256_CTS_HMAC_SHA1.is_aes() && !EncryptionType::RC4_HMAC.is_aes());
        assert_eq!(EncryptionType(99).name(), None);
        assert_eq!(KrbErrorCode::PREAUTH_FAILED.meaning(), Some("pre-authentication failed (wrong password)"));
        assert_eq!(DnsType::SRV.name(), Some("SRV"));
    }
}
