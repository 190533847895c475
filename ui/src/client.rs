//! Who a request comes from, for the limits kept per client address (the login form's).
//!
//! Behind a load balancer (an AWS ALB, nginx) every request's peer is the balancer, so a limit
//! per peer would be one budget for everyone. flow.toml's `[api] trusted_proxies` names the
//! balancers; a request from one of them is counted against the address it forwarded for: the
//! last one in `X-Forwarded-For` that is not itself a trusted proxy. Entries further left were
//! written by the client and can be anything, so they are never used. With no trusted proxies
//! (the default) the header is ignored.

use std::net::IpAddr;

use axum::http::HeaderMap;
use ipnet::IpNet;

/// The address a request counts against.
pub fn client_addr(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let forwarded: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().parse::<IpAddr>())
        .collect::<Result<_, _>>()
        // A header that does not parse was not written by a proxy flow trusts.
        .unwrap_or_default();
    forwarded
        .into_iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .unwrap_or(peer)
}

/// Parses `trusted_proxies` entries: an address (`10.0.0.7`) or a network (`10.0.0.0/16`).
pub fn parse_proxies(entries: &[String]) -> Result<Vec<IpNet>, String> {
    entries
        .iter()
        .map(|e| {
            e.parse::<IpNet>()
                .or_else(|_| e.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    format!("'{e}' is neither an address nor a network such as 10.0.0.0/16")
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_addresses_count_only_from_trusted_proxies() {
        let proxies = parse_proxies(&["10.0.0.0/16".into(), "192.168.1.5".into()]).unwrap();
        let xff = headers(&["6.6.6.6, 1.2.3.4", "10.0.3.3"]);
        // From a balancer: the last address it did not add itself.
        assert_eq!(client_addr(ip("10.0.0.9"), &xff, &proxies), ip("1.2.3.4"));
        assert_eq!(
            client_addr(ip("192.168.1.5"), &headers(&["5.5.5.5"]), &proxies),
            ip("5.5.5.5")
        );
        // From anyone else the header is the client's own text.
        assert_eq!(client_addr(ip("8.8.8.8"), &xff, &proxies), ip("8.8.8.8"));
        assert_eq!(client_addr(ip("10.0.0.9"), &xff, &[]), ip("10.0.0.9"));
        // Nothing usable forwarded: the balancer itself.
        for bad in [
            headers(&[]),
            headers(&["not-an-ip"]),
            headers(&["10.0.1.1"]),
        ] {
            assert_eq!(client_addr(ip("10.0.0.9"), &bad, &proxies), ip("10.0.0.9"));
        }
        let v6 = parse_proxies(&["fd00::/8".into()]).unwrap();
        assert_eq!(
            client_addr(ip("fd00::1"), &headers(&["2001:db8::7"]), &v6),
            ip("2001:db8::7")
        );
        assert!(parse_proxies(&["10.0.0.0/40".into()]).is_err());
        assert!(parse_proxies(&["balancer".into()]).is_err());
    }
}
