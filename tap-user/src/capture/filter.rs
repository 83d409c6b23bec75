//! The set of domain-controller addresses and service ports, parsed from the command line
//! or a file, and applied to the XDP program's maps as a difference so a live change never
//! leaves a moment where a DC that stays in the set is missing from the maps.

use std::{
    collections::BTreeSet,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use aya::maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData, MapError};
use tap_common::{
    config::{ConfigSlot, FLAG_V4_NETS, FLAG_V6_NETS},
    filter::{DEFAULT_RPC_RANGE, DEFAULT_SERVICE_PORTS, MAX_DC_ENTRIES, PORT_DYNAMIC_RPC, PORT_SERVICE},
};

use crate::time::WallClock;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterParseError {
    #[error("{origin}: '{entry}' is not an IPv4/IPv6 address or CIDR subnet")]
    BadAddress { origin: String, entry: String },
    #[error("{origin}: prefix length in '{entry}' is larger than {max}")]
    BadPrefix { origin: String, entry: String, max: u8 },
    #[error("{origin}: '{entry}' is not a port number between 1 and 65535")]
    BadPort { origin: String, entry: String },
    #[error("{origin}: '{entry}' is not a port range FIRST-LAST above 1023 (e.g. 49152-65535), or none")]
    BadRange { origin: String, entry: String },
    #[error("{origin}: more than {max} DC entries of one kind (the XDP maps hold {max})")]
    TooMany { origin: String, max: u32 },
}

/// Monitored domain controllers: single addresses and subnets of both families. Subnets
/// are stored masked (10.0.0.7/24 means 10.0.0.0/24).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DcSet {
    v4_hosts: BTreeSet<[u8; 4]>,
    v6_hosts: BTreeSet<[u8; 16]>,
    v4_nets: BTreeSet<([u8; 4], u8)>,
    v6_nets: BTreeSet<([u8; 16], u8)>,
}

impl DcSet {
    /// Parses entries separated by commas or whitespace; `origin` names the source in errors
    /// ("--dc", "dcs.txt line 4").
    pub fn parse_list(text: &str, origin: &str) -> Result<Self, FilterParseError> {
        let mut set = Self::default();
        for entry in text.split(|c: char| c == ',' || c.is_whitespace()).filter(|e| !e.is_empty()) {
            set.insert(entry, origin)?;
        }
        set.check_capacity(origin)?;
        Ok(set)
    }

    /// Parses a file's text: one or more entries per line, `#` starts a comment.
    pub fn parse_file(text: &str, file_name: &str) -> Result<Self, FilterParseError> {
        let mut set = Self::default();
        for (n, line) in text.lines().enumerate() {
            let content = line.split('#').next().unwrap_or("");
            let origin = format!("{file_name} line {}", n + 1);
            for entry in content.split(|c: char| c == ',' || c.is_whitespace()).filter(|e| !e.is_empty()) {
                set.insert(entry, &origin)?;
            }
        }
        set.check_capacity(file_name)?;
        Ok(set)
    }

    fn insert(&mut self, entry: &str, origin: &str) -> Result<(), FilterParseError> {
        let bad = || FilterParseError::BadAddress { origin: origin.into(), entry: entry.into() };
        let (addr, prefix) = match entry.split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().map_err(|_| bad())?)),
            None => (entry, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(FilterParseError::BadPrefix { origin: origin.into(), entry: entry.into(), max });
        }
        match addr {
            IpAddr::V4(a) if prefix == 32 => {
                self.v4_hosts.insert(a.octets());
            }
            IpAddr::V4(a) => {
                let masked = u32::from(a) & u32::MAX.checked_shl(32 - prefix as u32).unwrap_or(0);
                self.v4_nets.insert((masked.to_be_bytes(), prefix));
            }
            IpAddr::V6(a) if prefix == 128 => {
                self.v6_hosts.insert(a.octets());
            }
            IpAddr::V6(a) => {
                let masked = u128::from(a) & u128::MAX.checked_shl(128 - prefix as u32).unwrap_or(0);
                self.v6_nets.insert((masked.to_be_bytes(), prefix));
            }
        }
        Ok(())
    }

    fn check_capacity(&self, origin: &str) -> Result<(), FilterParseError> {
        let most = [self.v4_hosts.len(), self.v6_hosts.len(), self.v4_nets.len(), self.v6_nets.len()];
        if most.iter().any(|&n| n > MAX_DC_ENTRIES as usize) {
            return Err(FilterParseError::TooMany { origin: origin.into(), max: MAX_DC_ENTRIES });
        }
        Ok(())
    }

    pub fn union(mut self, other: &DcSet) -> Self {
        self.v4_hosts.extend(other.v4_hosts.iter().copied());
        self.v6_hosts.extend(other.v6_hosts.iter().copied());
        self.v4_nets.extend(other.v4_nets.iter().copied());
        self.v6_nets.extend(other.v6_nets.iter().copied());
        self
    }

    pub fn len(&self) -> usize {
        self.v4_hosts.len() + self.v6_hosts.len() + self.v4_nets.len() + self.v6_nets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One monitored entry of a [`DcSet`]: a DC address or a subnet of DCs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DcEntry {
    V4Host([u8; 4]),
    V6Host([u8; 16]),
    V4Net([u8; 4], u8),
    V6Net([u8; 16], u8),
}

impl DcEntry {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (*self, ip) {
            (DcEntry::V4Host(a), IpAddr::V4(ip)) => a == ip.octets(),
            (DcEntry::V6Host(a), IpAddr::V6(ip)) => a == ip.octets(),
            (DcEntry::V4Net(net, p), IpAddr::V4(ip)) => {
                u32::from(ip) & u32::MAX.checked_shl(32 - p as u32).unwrap_or(0) == u32::from_be_bytes(net)
            }
            (DcEntry::V6Net(net, p), IpAddr::V6(ip)) => {
                u128::from(ip) & u128::MAX.checked_shl(128 - p as u32).unwrap_or(0) == u128::from_be_bytes(net)
            }
            _ => false,
        }
    }
}

impl fmt::Display for DcEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DcEntry::V4Host(a) => write!(f, "{}", Ipv4Addr::from(a)),
            DcEntry::V6Host(a) => write!(f, "{}", Ipv6Addr::from(a)),
            DcEntry::V4Net(a, p) => write!(f, "{}/{p}", Ipv4Addr::from(a)),
            DcEntry::V6Net(a, p) => write!(f, "{}/{p}", Ipv6Addr::from(a)),
        }
    }
}

impl DcSet {
    /// Every entry, in the order `Display` lists them.
    pub fn entries(&self) -> Vec<DcEntry> {
        let mut out = Vec::with_capacity(self.len());
        out.extend(self.v4_hosts.iter().map(|a| DcEntry::V4Host(*a)));
        out.extend(self.v4_nets.iter().map(|(a, p)| DcEntry::V4Net(*a, *p)));
        out.extend(self.v6_hosts.iter().map(|a| DcEntry::V6Host(*a)));
        out.extend(self.v6_nets.iter().map(|(a, p)| DcEntry::V6Net(*a, *p)));
        out
    }
}

impl fmt::Display for DcSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.entries().iter().map(DcEntry::to_string).collect();
        f.write_str(&parts.join(","))
    }
}

/// Service ports on the DC side of a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSet(BTreeSet<u16>);

impl Default for PortSet {
    fn default() -> Self {
        Self(DEFAULT_SERVICE_PORTS.into_iter().collect())
    }
}

impl PortSet {
    pub fn parse_list(text: &str, origin: &str) -> Result<Self, FilterParseError> {
        let mut ports = BTreeSet::new();
        for entry in text.split(|c: char| c == ',' || c.is_whitespace()).filter(|e| !e.is_empty()) {
            match entry.parse::<u16>() {
                Ok(p) if p != 0 => ports.insert(p),
                _ => return Err(FilterParseError::BadPort { origin: origin.into(), entry: entry.into() }),
            };
        }
        Ok(Self(ports))
    }

    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        self.0.iter().copied()
    }

    /// These ports and `more`.
    pub fn with(&self, more: impl IntoIterator<Item = u16>) -> Self {
        let mut all = self.0.clone();
        all.extend(more);
        Self(all)
    }
}

impl fmt::Display for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(u16::to_string).collect();
        f.write_str(&parts.join(","))
    }
}

/// A DC's dynamic RPC port range (`--rpc-ports 49152-65535`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RpcRange {
    pub first: u16,
    pub last: u16,
}

impl RpcRange {
    /// "FIRST-LAST", or "none" for no range.
    pub fn parse(text: &str, origin: &str) -> Result<Option<Self>, FilterParseError> {
        if text.trim().eq_ignore_ascii_case("none") {
            return Ok(None);
        }
        let bad = || FilterParseError::BadRange { origin: origin.into(), entry: text.into() };
        let (a, b) = text.trim().split_once('-').ok_or_else(bad)?;
        let (first, last) = (a.trim().parse::<u16>().map_err(|_| bad())?, b.trim().parse::<u16>().map_err(|_| bad())?);
        if first < 1024 || first > last {
            return Err(bad());
        }
        Ok(Some(Self { first, last }))
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl Default for RpcRange {
    fn default() -> Self {
        Self { first: DEFAULT_RPC_RANGE.0, last: DEFAULT_RPC_RANGE.1 }
    }
}

impl fmt::Display for RpcRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// The XDP program's filter maps, owned by the sensor for live updates.
pub struct FilterMaps {
    pub(crate) v4_hosts: HashMap<MapData, [u8; 4], u8>,
    pub(crate) v6_hosts: HashMap<MapData, [u8; 16], u8>,
    pub(crate) v4_nets: LpmTrie<MapData, [u8; 4], u8>,
    pub(crate) v6_nets: LpmTrie<MapData, [u8; 16], u8>,
    pub(crate) ports: Array<MapData, u8>,
    pub(crate) config: Array<MapData, u32>,
    /// What the maps hold now, so updates are differences.
    current: DcSet,
    current_ports: BTreeSet<u16>,
    rpc_range: Option<RpcRange>,
}

/// What an update changed, for the log line.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FilterChange {
    pub added: usize,
    pub removed: usize,
}

impl FilterMaps {
    pub(crate) fn new(
        v4_hosts: HashMap<MapData, [u8; 4], u8>,
        v6_hosts: HashMap<MapData, [u8; 16], u8>,
        v4_nets: LpmTrie<MapData, [u8; 4], u8>,
        v6_nets: LpmTrie<MapData, [u8; 16], u8>,
        ports: Array<MapData, u8>,
        config: Array<MapData, u32>,
    ) -> Self {
        Self {
            v4_hosts,
            v6_hosts,
            v4_nets,
            v6_nets,
            ports,
            config,
            current: DcSet::default(),
            current_ports: BTreeSet::new(),
            rpc_range: None,
        }
    }

    /// Makes the maps hold exactly `next`: additions first, then the subnet flags, then
    /// removals, so entries present before and after are never absent in between.
    pub fn set_dcs(&mut self, next: &DcSet) -> Result<FilterChange, MapError> {
        let cur = &self.current;
        let mut change = FilterChange::default();
        for a in next.v4_hosts.difference(&cur.v4_hosts) {
            self.v4_hosts.insert(a, 1, 0)?;
            change.added += 1;
        }
        for a in next.v6_hosts.difference(&cur.v6_hosts) {
            self.v6_hosts.insert(a, 1, 0)?;
            change.added += 1;
        }
        for (a, p) in next.v4_nets.difference(&cur.v4_nets) {
            self.v4_nets.insert(&Key::new(*p as u32, *a), 1, 0)?;
            change.added += 1;
        }
        for (a, p) in next.v6_nets.difference(&cur.v6_nets) {
            self.v6_nets.insert(&Key::new(*p as u32, *a), 1, 0)?;
            change.added += 1;
        }
        let mut flags = 0;
        if !next.v4_nets.is_empty() {
            flags |= FLAG_V4_NETS;
        }
        if !next.v6_nets.is_empty() {
            flags |= FLAG_V6_NETS;
        }
        self.config.set(ConfigSlot::Flags as u32, flags, 0)?;
        for a in cur.v4_hosts.difference(&next.v4_hosts) {
            self.v4_hosts.remove(a)?;
            change.removed += 1;
        }
        for a in cur.v6_hosts.difference(&next.v6_hosts) {
            self.v6_hosts.remove(a)?;
            change.removed += 1;
        }
        for (a, p) in cur.v4_nets.difference(&next.v4_nets) {
            self.v4_nets.remove(&Key::new(*p as u32, *a))?;
            change.removed += 1;
        }
        for (a, p) in cur.v6_nets.difference(&next.v6_nets) {
            self.v6_nets.remove(&Key::new(*p as u32, *a))?;
            change.removed += 1;
        }
        self.current = next.clone();
        Ok(change)
    }

    /// What a port's slot holds when it is not (or no longer) a service port.
    fn unlisted(&self, port: u16) -> u8 {
        if self.rpc_range.is_some_and(|r| r.contains(port)) {
            PORT_DYNAMIC_RPC
        } else {
            0
        }
    }

    pub fn set_ports(&mut self, next: &PortSet) -> Result<(), MapError> {
        for p in next.0.difference(&self.current_ports) {
            self.ports.set(*p as u32, PORT_SERVICE, 0)?;
        }
        for p in self.current_ports.difference(&next.0) {
            self.ports.set(*p as u32, self.unlisted(*p), 0)?;
        }
        self.current_ports = next.0.clone();
        Ok(())
    }

    /// Adds one service port (a dynamic RPC endpoint learned from the endpoint mapper);
    /// returns whether it was new.
    pub fn add_port(&mut self, port: u16) -> Result<bool, MapError> {
        if port == 0 || self.current_ports.contains(&port) {
            return Ok(false);
        }
        self.ports.set(port as u32, PORT_SERVICE, 0)?;
        self.current_ports.insert(port);
        Ok(true)
    }

    /// Keeps the DC's dynamic RPC range (when the other end is on an unprivileged port too),
    /// or stops; service ports inside the range stay service ports.
    pub fn set_rpc_range(&mut self, next: Option<RpcRange>) -> Result<(), MapError> {
        let old = std::mem::replace(&mut self.rpc_range, next);
        let touched = [old, next].into_iter().flatten().flat_map(|r| r.first..=r.last);
        for port in touched.collect::<BTreeSet<u16>>() {
            if !self.current_ports.contains(&port) {
                self.ports.set(port as u32, self.unlisted(port), 0)?;
            }
        }
        Ok(())
    }

    pub fn set_snaplen(&mut self, snaplen: u32) -> Result<(), MapError> {
        self.config.set(ConfigSlot::Snaplen as u32, snaplen, 0)
    }

    /// The time base of the records' timestamps; before attaching (see
    /// `ConfigSlot::ClockOffsetLow`).
    pub fn set_clock(&mut self, clock: WallClock) -> Result<(), MapError> {
        let offset = clock.realtime_minus_monotonic_ns();
        self.config.set(ConfigSlot::ClockOffsetLow as u32, offset as u32, 0)?;
        self.config.set(ConfigSlot::ClockOffsetHigh as u32, (offset >> 32) as u32, 0)
    }

    pub fn dcs(&self) -> &DcSet {
        &self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_ranges_parse_or_say_what_is_wrong() {
        assert_eq!(RpcRange::parse("49152-65535", "--rpc-ports").unwrap(), Some(RpcRange::default()));
        assert_eq!(RpcRange::parse("none", "--rpc-ports").unwrap(), None);
        let r = RpcRange::parse(" 5000 - 5100 ", "x").unwrap().unwrap();
        assert!(r.contains(5000) && r.contains(5100) && !r.contains(5101));
        for bad in ["", "5000", "80-90", "6000-5000", "a-b", "1024-70000"] {
            let e = RpcRange::parse(bad, "sensor.toml rpc_ports").unwrap_err().to_string();
            assert!(e.contains("sensor.toml rpc_ports") && e.contains("FIRST-LAST"), "{bad}: {e}");
        }
    }

    #[test]
    fn parses_hosts_and_masks_subnets() {
        let set = DcSet::parse_list("10.0.0.10, fd00::10 10.1.2.3/24,fd00:1::7/64,10.0.0.10/32", "--dc").unwrap();
        assert_eq!(set.to_string(), "10.0.0.10,10.1.2.0/24,fd00::10,fd00:1::/64");
        assert_eq!(set.len(), 4);
    }

    #[test]
    fn zero_prefix_means_everything() {
        let set = DcSet::parse_list("0.0.0.0/0,::/0", "--dc").unwrap();
        assert_eq!(set.to_string(), "0.0.0.0/0,::/0");
    }

    #[test]
    fn errors_name_the_entry_and_where_it_came_from() {
        let err = DcSet::parse_list("10.0.0.10,dc1.lab", "--dc").unwrap_err();
        assert_eq!(err.to_string(), "--dc: 'dc1.lab' is not an IPv4/IPv6 address or CIDR subnet");
        let err = DcSet::parse_file("10.0.0.1\n# comment\n\n10.0.0.0/33 # too long\n", "dcs.txt").unwrap_err();
        assert_eq!(err.to_string(), "dcs.txt line 4: prefix length in '10.0.0.0/33' is larger than 32");
        assert!(matches!(DcSet::parse_list("fd00::/129", "x"), Err(FilterParseError::BadPrefix { max: 128, .. })));
        assert!(matches!(DcSet::parse_list("10.0.0.1/x", "x"), Err(FilterParseError::BadAddress { .. })));
    }

    #[test]
    fn file_comments_and_blank_lines_are_ignored() {
        let set = DcSet::parse_file("# DCs of site A\n10.0.0.10\n\n  fd00::10  # dc2\n", "dcs.txt").unwrap();
        assert_eq!(set.to_string(), "10.0.0.10,fd00::10");
    }

    #[test]
    fn too_many_entries_are_refused() {
        let list: Vec<String> = (0..=MAX_DC_ENTRIES).map(|i| Ipv4Addr::from(0x0a00_0000 + i).to_string()).collect();
        assert!(matches!(DcSet::parse_list(&list.join(","), "--dc"), Err(FilterParseError::TooMany { .. })));
    }

    #[test]
    fn ports_parse_and_reject_zero_and_words() {
        assert_eq!(
            PortSet::parse_list("88,389 445", "--ports").unwrap().iter().collect::<Vec<_>>(),
            vec![88, 389, 445]
        );
        assert!(PortSet::parse_list("0", "--ports").is_err());
        assert!(PortSet::parse_list("ldap", "--ports").is_err());
        assert!(PortSet::parse_list("70000", "--ports").is_err());
        assert_eq!(PortSet::default().iter().count(), DEFAULT_SERVICE_PORTS.len());
    }
}
