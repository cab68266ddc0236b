//! Client addresses as per-address limits count them.

use std::net::IpAddr;

/// The unit that per-address limits (connection cap, login throttle, registration limit)
/// count: an IPv4 address, or an IPv6 /64 — the smallest block a single subscriber is usually
/// given (RFC 6177), so one host cannot dodge a limit by rotating through its own prefix.
/// IPv4-mapped IPv6 addresses count as IPv4.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !(u128::MAX >> 64)).into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_is_itself_v6_is_its_64_and_mapped_v4_is_v4() {
        let key = |s: &str| address_key(s.parse().expect("ip")).to_string();
        assert_eq!(key("192.0.2.7"), "192.0.2.7");
        assert_eq!(key("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::");
        assert_eq!(key("::ffff:192.0.2.7"), "192.0.2.7");
    }
}
