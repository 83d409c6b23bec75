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
}
