//! Kubernetes' IP and CIDR libraries (k8s.io/apiserver/pkg/cel/library/ip.go, cidr.go):
//! `ip(s)`, `isIP`, `ip.isCanonical(s)`, and on an IP `family`, `isUnspecified`,
//! `isLoopback`, `isLinkLocalMulticast`, `isLinkLocalUnicast`, `isGlobalUnicast`;
//! `cidr(s)`, `isCIDR`, and on a CIDR `containsIP`, `containsCIDR`, `ip`, `masked`,
//! `prefixLength`; `string(ip)` and `string(cidr)`.
//!
//! As Kubernetes does, IPv4-mapped IPv6 addresses and zones are refused.

use std::net::IpAddr;
use std::sync::Arc;

use cel::extractors::This;
use cel::{Context, ExecutionError, FunctionContext, ResolveResult, Value};

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub struct Ip(pub IpAddr);

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl cel::objects::Opaque for Ip {
    fn runtime_type_name(&self) -> &str {
        "net.IP"
    }
}

impl cel::objects::Opaque for Cidr {
    fn runtime_type_name(&self) -> &str {
        "net.CIDR"
    }
}

pub fn parse_ip(s: &str) -> Option<IpAddr> {
    let ip: IpAddr = s.parse().ok()?;
    match ip {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => None,
        _ => Some(ip),
    }
}

pub fn parse_cidr(s: &str) -> Option<Cidr> {
    let (addr, prefix) = s.split_once('/')?;
    let addr = parse_ip(addr)?;
    if prefix.is_empty() || prefix.len() > 3 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let prefix: u8 = prefix.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (prefix <= max).then_some(Cidr { addr, prefix })
}

fn bits(ip: IpAddr) -> (u128, u8) {
    match ip {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
        IpAddr::V6(v6) => (u128::from(v6), 128),
    }
}

fn from_bits(b: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4((b as u32).into())
    } else {
        IpAddr::V6(b.into())
    }
}

impl Cidr {
    fn mask(&self) -> u128 {
        let width = bits(self.addr).1;
        if self.prefix == 0 {
            0
        } else {
            (u128::MAX << (128 - u32::from(self.prefix))) >> (128 - u32::from(width))
        }
    }
    pub fn masked(&self) -> Cidr {
        let (b, _) = bits(self.addr);
        Cidr {
            addr: from_bits(b & self.mask(), self.addr.is_ipv4()),
            prefix: self.prefix,
        }
    }
    pub fn contains_ip(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4()
            && (bits(ip).0 & self.mask()) == (bits(self.addr).0 & self.mask())
    }
    pub fn contains_cidr(&self, other: &Cidr) -> bool {
        other.prefix >= self.prefix && self.contains_ip(other.addr)
    }
}

fn is_link_local_multicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.octets()[..3] == [224, 0, 0],
        IpAddr::V6(v6) => v6.segments()[0] & 0xff0f == 0xff02,
    }
}

fn is_link_local_unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
    }
}

/// Go's `IP.IsGlobalUnicast`: anything but unspecified, loopback, multicast, link-local
/// and the IPv4 broadcast address.
fn is_global_unicast(ip: IpAddr) -> bool {
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || is_link_local_unicast(ip)
        || matches!(ip, IpAddr::V4(v4) if v4.is_broadcast()))
}

fn ip_of(ftx: &FunctionContext, v: &Value) -> Result<IpAddr, ExecutionError> {
    match v {
        Value::Opaque(o) => o.downcast_ref::<Ip>().map(|i| i.0),
        Value::String(s) => parse_ip(s),
        _ => None,
    }
    .ok_or_else(|| ftx.error("expected an IP address"))
}

fn cidr_of(ftx: &FunctionContext, v: &Value) -> Result<Cidr, ExecutionError> {
    match v {
        Value::Opaque(o) => o.downcast_ref::<Cidr>().copied(),
        Value::String(s) => parse_cidr(s),
        _ => None,
    }
    .ok_or_else(|| ftx.error("expected a CIDR"))
}

/// `string(ip)` and `string(cidr)`, for the `string` conversion the environment declares.
pub fn to_string(v: &Value) -> Option<String> {
    let Value::Opaque(o) = v else { return None };
    if let Some(ip) = o.downcast_ref::<Ip>() {
        return Some(ip.0.to_string());
    }
    o.downcast_ref::<Cidr>()
        .map(|c| format!("{}/{}", c.addr, c.prefix))
}

pub fn register(ctx: &mut Context<'static, 'static>) {
    let _ = ctx.add_function("ip", |ftx: &FunctionContext, cel::extractors::Arguments(args): cel::extractors::Arguments| -> ResolveResult {
        // `ip(string)`, or `cidr.ip()` on a CIDR receiver.
        if let Some(this) = &ftx.this {
            if let Ok(Value::Opaque(o)) = Value::try_from(&**this)
                && let Some(c) = o.downcast_ref::<Cidr>()
            {
                return Ok(Value::Opaque(Arc::new(Ip(c.addr))));
            }
            return Err(ftx.error("ip() applies to a CIDR"));
        }
        match args.first() {
            Some(Value::String(s)) => parse_ip(s.as_str())
                .map(|ip| Value::Opaque(Arc::new(Ip(ip))))
                .ok_or_else(|| ftx.error(format!("IP Address {s:?} parse error during conversion from string: ParseAddr({s:?}): unable to parse IP"))),
            _ => Err(ftx.error("ip() takes a string")),
        }
    });
    let _ = ctx.add_function("isIP", |s: Arc<String>| parse_ip(&s).is_some());
    let _ = ctx.add_function(
        "ip.isCanonical",
        |ftx: &FunctionContext, s: Arc<String>| -> ResolveResult {
            let ip =
                parse_ip(&s).ok_or_else(|| ftx.error(format!("IP Address {s:?} parse error")))?;
            Ok(Value::Bool(ip.to_string() == *s))
        },
    );
    let _ = ctx.add_function(
        "family",
        |ftx: &FunctionContext, This(v): This<Value>| -> ResolveResult {
            Ok(Value::Int(if ip_of(ftx, &v)?.is_ipv4() { 4 } else { 6 }))
        },
    );
    let _ = ctx.add_function(
        "isUnspecified",
        |ftx: &FunctionContext, This(v): This<Value>| -> ResolveResult {
            Ok(Value::Bool(ip_of(ftx, &v)?.is_unspecified()))
        },
    );
    let _ = ctx.add_function(
        "isLoopback",
        |ftx: &FunctionContext, This(v): This<Value>| -> ResolveResult {
            Ok(Value::Bool(ip_of(ftx, &v)?.is_loopback()))
        },
    );
    let _ = ctx.add_function(
        "isLinkLocalMulticast",
        |ftx: &FunctionContext, This(v): This<Value>| -> ResolveResult {
            Ok(Value::Bool(is_link_local_multicast(ip_of(ftx, &v)?)))
        },
    );
    let _ = ctx.add_function(
        "isLinkLocalUnicast",
        |ftx: &FunctionContext, This(v): This<Value>| -> ResolveResult {
            Ok(Value::Bool(is_link_local_unicast(ip_of(ftx, &v)?)))
        },
    );
    let _ = ctx.add_function(
        "isGlobalUnicast",
        |ftx: &FunctionContext, This(v): This<Value>| -> ResolveResult {
            Ok(Value::Bool(is_global_unicast(ip_of(ftx, &v)?)))
        },
    );
    let _ = ctx.add_function("cidr", |ftx: &FunctionContext, s: Arc<String>| -> ResolveResult {
        parse_cidr(&s)
            .map(|c| Value::Opaque(Arc::new(c)))
            .ok_or_else(|| ftx.error(format!("network address {s:?} parse error during conversion from string: netip.ParsePrefix({s:?}): bad prefix")))
    });
    let _ = ctx.add_function("isCIDR", |s: Arc<String>| parse_cidr(&s).is_some());
    let _ = ctx.add_function(
        "containsIP",
        |ftx: &FunctionContext, This(v): This<Value>, ip: Value| -> ResolveResult {
            Ok(Value::Bool(cidr_of(ftx, &v)?.contains_ip(ip_of(ftx, &ip)?)))
        },
    );
    let _ = ctx.add_function(
        "containsCIDR",
        |ftx: &FunctionContext, This(v): This<Value>, c: Value| -> ResolveResult {
            Ok(Value::Bool(
                cidr_of(ftx, &v)?.contains_cidr(&cidr_of(ftx, &c)?),
            ))
        },
    );
    let _ = ctx.add_function(
        "masked",
        |ftx: &FunctionContext, This(v): This<Value>| -> ResolveResult {
            Ok(Value::Opaque(Arc::new(cidr_of(ftx, &v)?.masked())))
        },
    );
    let _ = ctx.add_function(
        "prefixLength",
        |ftx: &FunctionContext, This(v): This<Value>| -> ResolveResult {
            Ok(Value::Int(i64::from(cidr_of(ftx, &v)?.prefix)))
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_contain_what_their_mask_covers() {
        let c = parse_cidr("10.0.0.0/8").unwrap();
        assert!(c.contains_ip(parse_ip("10.200.1.1").unwrap()));
        assert!(!c.contains_ip(parse_ip("11.0.0.1").unwrap()));
        assert!(c.contains_cidr(&parse_cidr("10.1.0.0/16").unwrap()));
        assert!(!c.contains_cidr(&parse_cidr("10.0.0.0/7").unwrap()));
        assert_eq!(
            parse_cidr("192.168.1.7/24").unwrap().masked(),
            parse_cidr("192.168.1.0/24").unwrap()
        );
        let v6 = parse_cidr("fd00::/64").unwrap();
        assert!(v6.contains_ip(parse_ip("fd00::1").unwrap()));
        assert!(!v6.contains_ip(parse_ip("10.0.0.1").unwrap()));
        assert!(
            parse_cidr("0.0.0.0/0")
                .unwrap()
                .contains_ip(parse_ip("1.2.3.4").unwrap())
        );
        for bad in [
            "10.0.0.0",
            "10.0.0.0/33",
            "10.0.0.0/-1",
            "::ffff:1.2.3.4/96",
            "x/8",
        ] {
            assert!(parse_cidr(bad).is_none(), "{bad}");
        }
        assert!(parse_ip("::ffff:1.2.3.4").is_none());
        assert!(is_link_local_multicast(parse_ip("ff02::1").unwrap()));
        assert!(is_global_unicast(parse_ip("8.8.8.8").unwrap()));
        assert!(!is_global_unicast(parse_ip("255.255.255.255").unwrap()));
    }
}
