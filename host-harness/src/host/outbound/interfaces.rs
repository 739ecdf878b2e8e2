//! The addresses of the harness's own machine: every address of every
//! network interface, as `getifaddrs` lists them. A connection to one of
//! them reaches this machine whatever range it lies in (a public address on
//! `eth0` is as local as 127.0.0.1), so the policy refuses them too
//! ([`super::policy`]). Read once and kept for [`REFRESH`]; the connect
//! itself also refuses a connection whose two ends have the same address
//! ([`super::connect`]), which catches an address added since.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a reading of the interfaces is used before the next.
pub const REFRESH: Duration = Duration::from_secs(5);

/// The machine's own addresses (IPv4-mapped IPv6 ones as their IPv4), at
/// most [`REFRESH`] old. Empty if they could never be read (the connect's
/// check still applies).
pub fn own_addresses() -> Arc<[IpAddr]> {
    static CACHE: Mutex<Option<(Instant, Arc<[IpAddr]>)>> = Mutex::new(None);
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((read_at, addresses)) = cache.as_ref() {
        if read_at.elapsed() < REFRESH {
            return Arc::clone(addresses);
        }
    }
    // A failed reading keeps the last one (and is retried after REFRESH).
    let addresses = match read() {
        Ok(addresses) => addresses.into(),
        Err(_) => cache.as_ref().map_or_else(|| Arc::from(Vec::new()), |(_, a)| Arc::clone(a)),
    };
    *cache = Some((Instant::now(), Arc::clone(&addresses)));
    addresses
}

/// Every IPv4 and IPv6 address of every interface, now.
#[cfg(unix)]
pub fn read() -> std::io::Result<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list it allocated, freed below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut addresses = Vec::new();
    let mut entry = head;
    while !entry.is_null() {
        // SAFETY: `entry` is a node of the list, valid until freeifaddrs;
        // `ifa_addr`, when set, points to a sockaddr of its `sa_family`.
        unsafe {
            let ifa = &*entry;
            if !ifa.ifa_addr.is_null() {
                match i32::from((*ifa.ifa_addr).sa_family) {
                    libc::AF_INET => {
                        let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                        addresses.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                        addresses.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)).to_canonical());
                    }
                    _ => {}
                }
            }
            entry = ifa.ifa_next;
        }
    }
    // SAFETY: the list getifaddrs returned, not used past here.
    unsafe { libc::freeifaddrs(head) };
    addresses.sort();
    addresses.dedup();
    Ok(addresses)
}

#[cfg(not(unix))]
pub fn read() -> std::io::Result<Vec<IpAddr>> {
    Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "no getifaddrs"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interfaces_include_loopback_and_are_cached() {
        let now = read().expect("getifaddrs");
        assert!(now.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)), "{now:?}");
        let cached = own_addresses();
        assert!(cached.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)), "{cached:?}");
        assert!(Arc::ptr_eq(&cached, &own_addresses()), "read again within {REFRESH:?}");
    }
}
