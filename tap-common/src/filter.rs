//! Which frames the XDP program keeps: domain-controller addresses and AD service ports.
//!
//! DC addresses live in two kinds of maps per family: an exact-match hash (one DC, the
//! common case, cheapest lookup) and an LPM trie for subnets. Service ports are a 65536-slot
//! array indexed by port number, so the check is one array load.

/// Exact DC addresses: key is the address in network byte order, value unused (1).
pub const DC_V4_HOSTS_MAP: &str = "DC_V4_HOSTS";
pub const DC_V6_HOSTS_MAP: &str = "DC_V6_HOSTS";
/// DC subnets: LPM trie keyed by (prefix length, address in network byte order).
pub const DC_V4_NETS_MAP: &str = "DC_V4_NETS";
pub const DC_V6_NETS_MAP: &str = "DC_V6_NETS";
/// Service ports: index is the port number, value non-zero when the port is monitored.
pub const PORTS_MAP: &str = "SERVICE_PORTS";

/// Capacity of each DC address map. Sized for a forest with many DCs per site.
pub const MAX_DC_ENTRIES: u32 = 4096;
/// One slot per TCP/UDP port number.
pub const PORT_SLOTS: u32 = 65536;
/// Port map value: a service port, kept whatever the other end's port.
pub const PORT_SERVICE: u8 = 1;
/// Port map value: a port of the DC's dynamic RPC range, kept when the other end's port is
/// not a well-known one (below 1024): a client calling an RPC endpoint on the DC, or DCs
/// replicating, but not the DC's own outgoing connections to web or DNS servers, which
/// come from the same range.
pub const PORT_DYNAMIC_RPC: u8 = 2;
/// Windows' dynamic port range since Server 2008, where RPC endpoints listen.
pub const DEFAULT_RPC_RANGE: (u16, u16) = (49152, 65535);

/// AD service ports kept by default: Kerberos 88 and kpasswd 464,
/// LDAP 389/636 and global catalog 3268/3269, SMB 445 and NetBIOS session service 139, the RPC
/// endpoint mapper 135, DNS 53, NetBIOS name service 137 and NTP 123. Dynamic RPC ports
/// are added at run time.
pub const DEFAULT_SERVICE_PORTS: [u16; 12] = [88, 464, 389, 636, 3268, 3269, 445, 139, 135, 53, 137, 123];
