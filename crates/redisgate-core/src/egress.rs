//! Egress policy for external instances: which resolved addresses a tenant's `redis://` URL
//! may make RedisGate connect to.
//!
//! Hostile tenants are the normal case, so the default is the safe one: only public unicast
//! addresses pass. Loopback, private, link-local, shared (CGNAT), unspecified, multicast,
//! broadcast and reserved ranges are refused (IPv4-mapped, -compatible, NAT64 and 6to4 IPv6
//! forms are judged by the IPv4 address they carry), and so is everything RedisGate itself
//! uses ([`OwnAddresses`]) and the cloud metadata services, even inside a range a deployment
//! administrator opened with an [`AllowEntry`]: no allow-list entry can hand a tenant
//! RedisGate's own database, limiter or local instances.
//!
//! The decision is made on resolved socket addresses, never on the text of the URL, so
//! numeric IPv4 spellings (`2130706433`, `0x7f000001`) and DNS names that resolve inward are
//! judged by what they reach. No I/O here: the server resolves and asks.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// What kind of address an IP is, as far as egress is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    /// Globally routable unicast: the only class allowed by default.
    Public,
    Loopback,
    /// `0.0.0.0/8`, `::`: connecting there reaches the local host.
    Unspecified,
    /// RFC 1918, IPv6 unique local (`fc00::/7`) and deprecated site-local.
    Private,
    LinkLocal,
    /// `100.64.0.0/10`, carrier-grade NAT.
    Shared,
    Multicast,
    Broadcast,
    /// Documentation, benchmarking, protocol-assignment and future-use ranges.
    Reserved,
    /// A cloud provider's instance metadata service (credentials live there).
    Metadata,
}

impl AddressClass {
    pub fn as_str(self) -> &'static str {
        match self {
            AddressClass::Public => "public",
            AddressClass::Loopback => "loopback",
            AddressClass::Unspecified => "unspecified",
            AddressClass::Private => "private",
            AddressClass::LinkLocal => "link-local",
            AddressClass::Shared => "shared (CGNAT)",
            AddressClass::Multicast => "multicast",
            AddressClass::Broadcast => "broadcast",
            AddressClass::Reserved => "reserved",
            AddressClass::Metadata => "cloud metadata",
        }
    }
}

/// Metadata services, checked before the ranges they sit in (and refused even where a range
/// is allowed). 168.63.129.16 (Azure's WireServer) is in public space, so only this list
/// catches it.
const METADATA: &[IpAddr] = &[
    IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)), // AWS, GCP, Azure, OpenStack, DigitalOcean, Oracle
    IpAddr::V4(Ipv4Addr::new(169, 254, 170, 2)),   // AWS ECS task metadata
    IpAddr::V4(Ipv4Addr::new(169, 254, 170, 23)),  // AWS EKS pod identity
    IpAddr::V4(Ipv4Addr::new(169, 254, 0, 23)),    // Tencent Cloud
    IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200)), // Alibaba Cloud
    IpAddr::V4(Ipv4Addr::new(192, 0, 0, 192)),     // Oracle Cloud (legacy)
    IpAddr::V4(Ipv4Addr::new(168, 63, 129, 16)),   // Azure WireServer
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)), // AWS IPv6
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x23)), // AWS EKS pod identity IPv6
];

const V4_RANGES: &[(Ipv4Net, AddressClass)] = &[
    (v4(0, 0, 0, 0, 8), AddressClass::Unspecified),
    (v4(10, 0, 0, 0, 8), AddressClass::Private),
    (v4(100, 64, 0, 0, 10), AddressClass::Shared),
    (v4(127, 0, 0, 0, 8), AddressClass::Loopback),
    (v4(169, 254, 0, 0, 16), AddressClass::LinkLocal),
    (v4(172, 16, 0, 0, 12), AddressClass::Private),
    (v4(192, 0, 0, 0, 24), AddressClass::Reserved),
    (v4(192, 0, 2, 0, 24), AddressClass::Reserved),
    (v4(192, 88, 99, 0, 24), AddressClass::Reserved),
    (v4(192, 168, 0, 0, 16), AddressClass::Private),
    (v4(198, 18, 0, 0, 15), AddressClass::Reserved),
    (v4(198, 51, 100, 0, 24), AddressClass::Reserved),
    (v4(203, 0, 113, 0, 24), AddressClass::Reserved),
    (v4(224, 0, 0, 0, 4), AddressClass::Multicast),
    (v4(255, 255, 255, 255, 32), AddressClass::Broadcast),
    (v4(240, 0, 0, 0, 4), AddressClass::Reserved),
];

const V6_RANGES: &[(Ipv6Net, AddressClass)] = &[
    (v6([0x64, 0xff9b, 1, 0], 48), AddressClass::Private), // local-use NAT64
    (v6([0x100, 0, 0, 0], 64), AddressClass::Reserved),    // discard
    (v6([0x2001, 0xdb8, 0, 0], 32), AddressClass::Reserved), // documentation
    (v6([0x2001, 0, 0, 0], 23), AddressClass::Reserved),   // protocol assignments, Teredo
    (v6([0x3fff, 0, 0, 0], 20), AddressClass::Reserved),   // documentation
    (v6([0x5f00, 0, 0, 0], 16), AddressClass::Reserved),   // SRv6 SIDs
    (v6([0xfc00, 0, 0, 0], 7), AddressClass::Private),
    (v6([0xfe80, 0, 0, 0], 10), AddressClass::LinkLocal),
    (v6([0xfec0, 0, 0, 0], 10), AddressClass::Private),
    (v6([0xff00, 0, 0, 0], 8), AddressClass::Multicast),
];

const fn v4(a: u8, b: u8, c: u8, d: u8, len: u8) -> Ipv4Net {
    Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), len)
}

const fn v6(head: [u16; 4], len: u8) -> Ipv6Net {
    Ipv6Net::new_assert(Ipv6Addr::new(head[0], head[1], head[2], head[3], 0, 0, 0, 0), len)
}

/// The IPv4 address an IPv6 address stands for, where connecting to it reaches that IPv4
/// address: mapped (`::ffff:a.b.c.d`), compatible (`::a.b.c.d`), NAT64 (`64:ff9b::/96`) and
/// 6to4 (`2002:aabb:ccdd::/48`). Every other address is returned as it is.
pub fn canonical(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else { return ip };
    let s = v6.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] => IpAddr::V4(low),
        // `::` and `::1` are themselves, not 0.0.0.0 and 0.0.0.1.
        [0, 0, 0, 0, 0, 0, hi, _] if hi != 0 => IpAddr::V4(low),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => IpAddr::V4(low),
        [0x2002, a, b, ..] => IpAddr::V4(Ipv4Addr::new((a >> 8) as u8, a as u8, (b >> 8) as u8, b as u8)),
        _ => ip,
    }
}

/// The class of `ip`, judged by the IPv4 address it carries if it carries one.
pub fn classify(ip: IpAddr) -> AddressClass {
    let ip = canonical(ip);
    if METADATA.contains(&ip) {
        return AddressClass::Metadata;
    }
    match ip {
        IpAddr::V4(v4) => {
            V4_RANGES.iter().find(|(net, _)| net.contains(&v4)).map_or(AddressClass::Public, |(_, c)| *c)
        }
        IpAddr::V6(v6) if v6.is_unspecified() => AddressClass::Unspecified,
        IpAddr::V6(v6) if v6.is_loopback() => AddressClass::Loopback,
        IpAddr::V6(v6) => V6_RANGES.iter().find(|(net, _)| net.contains(&v6)).map_or_else(
            // Only 2000::/3 is global unicast; the rest of the space is not handed out.
            || {
                if v6.segments()[0] & 0xe000 == 0x2000 {
                    AddressClass::Public
                } else {
                    AddressClass::Reserved
                }
            },
            |(_, c)| *c,
        ),
    }
}

/// One entry of `instances.external.allow`: a range (`10.0.0.0/8`), an address with or
/// without a port (`10.1.2.3`, `[fd00::1]:6379`), or a host name with or without a port
/// (`redis.internal`, `redis.internal:6379`), matched against the name in the URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowEntry {
    Net { net: IpNet, port: Option<u16> },
    Host { name: String, port: Option<u16> },
}

/// Why an allow-list entry does not parse; shown to the administrator with the key's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllowEntryError {
    #[error("`{0}` is not a CIDR range, an address, or a host name, with an optional :port")]
    Malformed(String),
    #[error("`{0}` has host bits set; write the network address (e.g. `{1}`)")]
    HostBits(String, IpNet),
    #[error("`{0}` has an invalid port (1-65535)")]
    Port(String),
}

impl FromStr for AllowEntry {
    type Err = AllowEntryError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let malformed = || AllowEntryError::Malformed(text.to_owned());
        let t = text.trim();
        if t.contains('/') {
            let net: IpNet = t.parse().map_err(|_| malformed())?;
            if net.trunc() != net {
                return Err(AllowEntryError::HostBits(text.to_owned(), net.trunc()));
            }
            return Ok(AllowEntry::Net { net, port: None });
        }
        if let Ok(ip) = t.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            return Ok(AllowEntry::Net { net: IpNet::from(ip), port: None });
        }
        if let Ok(sa) = t.parse::<SocketAddr>() {
            let port =
                Some(sa.port()).filter(|p| *p != 0).ok_or_else(|| AllowEntryError::Port(text.to_owned()))?;
            return Ok(AllowEntry::Net { net: IpNet::from(sa.ip()), port: Some(port) });
        }
        let (name, port) = match t.rsplit_once(':') {
            Some((name, port)) => {
                let port = port.parse::<u16>().ok().filter(|p| *p != 0);
                (name, Some(port.ok_or_else(|| AllowEntryError::Port(text.to_owned()))?))
            }
            None => (t, None),
        };
        let name = normalize_host(name);
        if !is_host_name(&name) {
            return Err(malformed());
        }
        Ok(AllowEntry::Host { name, port })
    }
}

impl AllowEntry {
    fn matches(&self, host: &str, addr: SocketAddr) -> bool {
        let (port_ok, hit) = match self {
            AllowEntry::Net { net, port } => (port, net.contains(&canonical(addr.ip()))),
            AllowEntry::Host { name, port } => (port, *name == normalize_host(host)),
        };
        hit && port_ok.is_none_or(|p| p == addr.port())
    }
}

/// Lower case, without the root's trailing dot or IPv6 brackets: how names are compared.
fn normalize_host(host: &str) -> String {
    host.trim_end_matches('.').trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase()
}

fn is_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The addresses of RedisGate's own services (listener, metadata database, limiter Redis,
/// standalone tokens' Redis servers, local instances): refused to tenants whatever the
/// allow-list says.
#[derive(Debug, Clone, Default)]
pub struct OwnAddresses {
    exact: Vec<SocketAddr>,
    local_ports: Vec<u16>,
}

impl OwnAddresses {
    /// A service at this exact address on another machine (a remote database).
    pub fn add_exact(&mut self, addr: SocketAddr) {
        self.exact.push(SocketAddr::new(canonical(addr.ip()), addr.port()));
    }

    /// A service on this machine at `port`. Every local address counts, since a listener on
    /// a wildcard address (or on loopback behind which one may hide) answers on all of them.
    pub fn add_local_port(&mut self, port: u16) {
        self.local_ports.push(port);
    }

    /// Whether `addr` reaches one of these services; `is_local` says whether an IP is one
    /// of this machine's (loopback and unspecified addresses always are).
    pub fn contains(&self, addr: SocketAddr, is_local: impl Fn(IpAddr) -> bool) -> bool {
        let ip = canonical(addr.ip());
        self.exact.iter().any(|o| o.ip() == ip && o.port() == addr.port())
            || (self.local_ports.contains(&addr.port())
                && (ip.is_loopback() || ip.is_unspecified() || is_local(ip)))
    }
}

/// Why an address was refused: for logs and deployment administrators only. Tenants get one
/// reason for all of these, so the refusal is no map of the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// One of RedisGate's own services.
    Own,
    Class(AddressClass),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Own => f.write_str("an address RedisGate itself uses"),
            Refusal::Class(c) => write!(f, "a {} address not in instances.external.allow", c.as_str()),
        }
    }
}

/// The allow-list, and the decision.
#[derive(Debug, Clone, Default)]
pub struct EgressPolicy {
    allow: Vec<AllowEntry>,
}

impl EgressPolicy {
    pub fn new(allow: Vec<AllowEntry>) -> Self {
        EgressPolicy { allow }
    }

    /// Parses the configured entries; the error carries the index of the bad one.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, (usize, AllowEntryError)> {
        let allow = entries
            .iter()
            .enumerate()
            .map(|(i, e)| e.as_ref().parse().map_err(|err| (i, err)))
            .collect::<Result<_, _>>()?;
        Ok(EgressPolicy { allow })
    }

    /// May RedisGate connect to `addr`, which `host` (the name in the tenant's URL) resolved to?
    pub fn decide(
        &self,
        host: &str,
        addr: SocketAddr,
        own: &OwnAddresses,
        is_local: impl Fn(IpAddr) -> bool,
    ) -> Result<(), Refusal> {
        if own.contains(addr, is_local) {
            return Err(Refusal::Own);
        }
        match classify(addr.ip()) {
            AddressClass::Public => Ok(()),
            AddressClass::Metadata => Err(Refusal::Class(AddressClass::Metadata)),
            _ if self.allow.iter().any(|e| e.matches(host, addr)) => Ok(()),
            class => Err(Refusal::Class(class)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn no_local(_: IpAddr) -> bool {
        false
    }

    #[test]
    fn classes_of_ipv4() {
        use AddressClass::*;
        for (addr, class) in [
            ("127.0.0.1", Loopback),
            ("127.255.0.9", Loopback),
            ("0.0.0.0", Unspecified),
            ("0.1.2.3", Unspecified),
            ("10.1.2.3", Private),
            ("172.16.0.1", Private),
            ("172.31.255.255", Private),
            ("192.168.1.1", Private),
            ("100.64.0.1", Shared),
            ("100.127.255.255", Shared),
            ("169.254.1.1", LinkLocal),
            ("169.254.169.254", Metadata),
            ("169.254.170.2", Metadata),
            ("100.100.100.200", Metadata),
            ("168.63.129.16", Metadata),
            ("192.0.0.192", Metadata),
            ("224.0.0.1", Multicast),
            ("239.255.255.250", Multicast),
            ("255.255.255.255", Broadcast),
            ("240.0.0.1", Reserved),
            ("192.0.2.10", Reserved),
            ("198.51.100.1", Reserved),
            ("203.0.113.5", Reserved),
            ("198.18.0.1", Reserved),
            ("192.0.0.8", Reserved),
            ("8.8.8.8", Public),
            ("172.32.0.1", Public),
            ("100.128.0.1", Public),
            ("1.1.1.1", Public),
        ] {
            assert_eq!(classify(ip(addr)), class, "{addr}");
        }
    }

    #[test]
    fn classes_of_ipv6_and_embedded_ipv4() {
        use AddressClass::*;
        for (addr, class) in [
            ("::1", Loopback),
            ("::", Unspecified),
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:7f00:1", Loopback),
            ("::127.0.0.1", Loopback),
            ("::ffff:10.0.0.1", Private),
            ("::ffff:169.254.169.254", Metadata),
            ("::ffff:0.0.0.0", Unspecified),
            ("64:ff9b::127.0.0.1", Loopback),
            ("64:ff9b::8.8.8.8", Public),
            ("64:ff9b:1::1", Private),
            ("2002:7f00:1::1", Loopback),
            ("2002:0808:0808::1", Public),
            ("fd00:ec2::254", Metadata),
            ("fd12:3456::1", Private),
            ("fc00::1", Private),
            ("fe80::1", LinkLocal),
            ("fec0::1", Private),
            ("ff02::1", Multicast),
            ("2001:db8::1", Reserved),
            ("2001::1", Reserved),
            ("3fff::1", Reserved),
            ("100::1", Reserved),
            ("4000::1", Reserved),
            ("2606:4700:4700::1111", Public),
            ("2a00:1450::1", Public),
        ] {
            assert_eq!(classify(ip(addr)), class, "{addr}");
        }
    }

    #[test]
    fn allow_entries_parse() {
        assert_eq!(
            "10.0.0.0/8".parse::<AllowEntry>().unwrap(),
            AllowEntry::Net { net: "10.0.0.0/8".parse().unwrap(), port: None }
        );
        assert_eq!(
            "10.1.2.3:6379".parse::<AllowEntry>().unwrap(),
            AllowEntry::Net { net: "10.1.2.3/32".parse().unwrap(), port: Some(6379) }
        );
        assert_eq!(
            "[fd00::1]:6380".parse::<AllowEntry>().unwrap(),
            AllowEntry::Net { net: "fd00::1/128".parse().unwrap(), port: Some(6380) }
        );
        assert_eq!(
            "fd00::/8".parse::<AllowEntry>().unwrap(),
            AllowEntry::Net { net: "fd00::/8".parse().unwrap(), port: None }
        );
        assert_eq!(
            "Redis.Internal.:6379".parse::<AllowEntry>().unwrap(),
            AllowEntry::Host { name: "redis.internal".into(), port: Some(6379) }
        );
        assert_eq!(
            "cache".parse::<AllowEntry>().unwrap(),
            AllowEntry::Host { name: "cache".into(), port: None }
        );
        assert!(matches!("10.0.0.1/8".parse::<AllowEntry>(), Err(AllowEntryError::HostBits(..))));
        assert!(matches!("redis.internal:0".parse::<AllowEntry>(), Err(AllowEntryError::Port(_))));
        assert!(matches!("redis.internal:99999".parse::<AllowEntry>(), Err(AllowEntryError::Port(_))));
        assert_eq!(
            "[fd00::1]".parse::<AllowEntry>().unwrap(),
            AllowEntry::Net { net: "fd00::1/128".parse().unwrap(), port: None }
        );
        for bad in ["", "10.0.0.0/33", "a b", "redis..internal", "http://x", "*"] {
            assert!(bad.parse::<AllowEntry>().is_err(), "{bad:?}");
        }
        assert_eq!(EgressPolicy::parse(&["10.0.0.0/8", "bad host"]).unwrap_err().0, 1);
    }

    #[test]
    fn default_policy_allows_only_public_unicast() {
        let p = EgressPolicy::default();
        let own = OwnAddresses::default();
        assert!(p.decide("redis.example", sa("8.8.8.8:6379"), &own, no_local).is_ok());
        assert!(p.decide("x", sa("[2606:4700::1]:6379"), &own, no_local).is_ok());
        for addr in [
            "127.0.0.1:6379",
            "[::1]:6379",
            "[::ffff:127.0.0.1]:6379",
            "0.0.0.0:6379",
            "10.0.0.5:6379",
            "192.168.0.2:6379",
            "169.254.169.254:80",
            "[fd00:ec2::254]:80",
            "100.100.100.200:80",
            "[fe80::1]:6379",
            "224.0.0.1:6379",
        ] {
            assert_eq!(
                p.decide("redis.example", sa(addr), &own, no_local)
                    .map_err(|r| matches!(r, Refusal::Class(_))),
                Err(true),
                "{addr}"
            );
        }
    }

    #[test]
    fn allow_list_opens_ranges_hosts_and_ports() {
        let p = EgressPolicy::parse(&["10.0.0.0/8", "redis.internal:6379", "192.168.1.7:6380"]).unwrap();
        let own = OwnAddresses::default();
        assert!(p.decide("10.2.3.4", sa("10.2.3.4:6379"), &own, no_local).is_ok());
        assert!(p.decide("x", sa("[::ffff:10.2.3.4]:1"), &own, no_local).is_ok(), "mapped form matches");
        assert!(p.decide("REDIS.internal.", sa("172.20.0.3:6379"), &own, no_local).is_ok());
        assert!(p.decide("redis.internal", sa("172.20.0.3:6380"), &own, no_local).is_err(), "other port");
        assert!(p.decide("other.internal", sa("172.20.0.3:6379"), &own, no_local).is_err());
        assert!(p.decide("x", sa("192.168.1.7:6380"), &own, no_local).is_ok());
        assert!(p.decide("x", sa("192.168.1.7:6379"), &own, no_local).is_err());
        assert!(p.decide("x", sa("127.0.0.1:6379"), &own, no_local).is_err());
    }

    #[test]
    fn metadata_stays_refused_inside_an_allowed_range() {
        let p = EgressPolicy::parse(&["169.254.0.0/16", "100.64.0.0/10", "fd00::/8"]).unwrap();
        let own = OwnAddresses::default();
        assert!(p.decide("x", sa("169.254.1.1:6379"), &own, no_local).is_ok());
        for addr in ["169.254.169.254:80", "100.100.100.200:80", "[fd00:ec2::254]:80"] {
            assert_eq!(
                p.decide("x", sa(addr), &own, no_local),
                Err(Refusal::Class(AddressClass::Metadata)),
                "{addr}"
            );
        }
    }

    #[test]
    fn own_addresses_stay_refused_inside_an_allowed_range() {
        let p = EgressPolicy::parse(&["127.0.0.0/8", "10.0.0.0/8", "0.0.0.0/8", "::/128"]).unwrap();
        let mut own = OwnAddresses::default();
        own.add_local_port(8080);
        own.add_exact(sa("10.0.0.9:5432"));
        let local = |ip: IpAddr| ip == "10.0.0.1".parse::<IpAddr>().unwrap();
        for addr in
            ["127.0.0.1:8080", "127.0.0.2:8080", "0.0.0.0:8080", "[::ffff:127.0.0.1]:8080", "10.0.0.1:8080"]
        {
            assert_eq!(p.decide("x", sa(addr), &own, local), Err(Refusal::Own), "{addr}");
        }
        assert_eq!(p.decide("db", sa("10.0.0.9:5432"), &own, local), Err(Refusal::Own));
        assert_eq!(p.decide("db", sa("[::ffff:10.0.0.9]:5432"), &own, local), Err(Refusal::Own));
        assert!(p.decide("x", sa("10.0.0.9:6379"), &own, local).is_ok());
        assert!(p.decide("x", sa("10.0.0.2:8080"), &own, local).is_ok(), "not a local address");
        assert!(p.decide("x", sa("127.0.0.1:6379"), &own, local).is_ok());
    }
}
