//! The outbound rules everything in this kit needs. Its emulators listen on
//! plain http on 127.0.0.1, which a runtime refuses by default (https to
//! public addresses only), so the demo, the bench and the tests allow
//! exactly that: `allow_http` and `127.0.0.0/8`, no other private network.

use host_harness::runtime::{CompileCache, Limits, OutboundSettings, Runtime, RuntimeOptions};
use std::path::Path;

/// The network the emulators listen on.
pub const NETWORK: &str = "127.0.0.0/8";

/// The `[host]` keys a config file needs to reach the emulators, for a
/// section that has other keys too.
pub const HOST_KEYS: &str = "allow_http = true\nallow_private_networks = [\"127.0.0.0/8\"]\n";

/// A whole `[host]` section with [`HOST_KEYS`] only.
pub const HOST_SECTION: &str = "[host]\nallow_http = true\nallow_private_networks = [\"127.0.0.0/8\"]\n";

/// Plain http to loopback IPv4 allowed, everything else as by default.
pub fn outbound() -> OutboundSettings {
    OutboundSettings {
        allow_http: true,
        allow_private_networks: vec![NETWORK.parse().expect("a network")],
        ..OutboundSettings::default()
    }
}

/// Runtime options with [`outbound`].
pub fn options(limits: Limits, cache: CompileCache) -> RuntimeOptions {
    RuntimeOptions { limits, cache, outbound: outbound(), ..RuntimeOptions::default() }
}

/// A runtime that may reach the emulators (compile cache beside the `.wasm`).
pub fn runtime(component: &Path, limits: Limits) -> anyhow::Result<Runtime> {
    Runtime::with_options(component, options(limits, CompileCache::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_section_and_the_settings_say_the_same() {
        let config = format!("{HOST_SECTION}\n[tenants.a]\n");
        let (host, _) =
            host_harness::tenant::parse_config(&config, Path::new("/h"), |_| None).expect("the section parses");
        assert_eq!(host.outbound, outbound());
        assert!(HOST_SECTION.ends_with(HOST_KEYS));
    }
}
