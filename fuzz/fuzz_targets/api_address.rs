//! Task API addresses (`unix:/PATH` or `HOST:PORT`) from the command line,
//! the config file and the environment.
//!
//! Invariants: a listen address is a unix socket with an absolute path or
//! a loopback TCP address; it prints back to itself; a client accepts
//! every listen address as the same address.
#![no_main]

use libfuzzer_sys::fuzz_target;
use node_agent::api_address::ApiAddress;
use std::net::SocketAddr;

/// `parse_client` resolves `host:port` names through the system resolver:
/// only addresses that need no lookup are fuzzed (a lookup per input would
/// measure DNS, not the parser).
fn needs_lookup(text: &str) -> bool {
    if text.starts_with("unix:") || text.parse::<SocketAddr>().is_ok() {
        return false;
    }
    match text.rsplit_once(':') {
        Some((host, port)) => port.parse::<u16>().is_ok() && !host.contains('\0'),
        None => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let listen = ApiAddress::parse_listen(text);
    if let Ok(addr) = &listen {
        match addr {
            ApiAddress::Tcp(sock) => {
                assert!(
                    sock.ip().is_loopback(),
                    "listen address {sock} is not loopback"
                )
            }
            ApiAddress::Unix(path) => assert!(path.is_absolute(), "{path:?}"),
        }
        let printed = addr.to_string();
        assert_eq!(
            ApiAddress::parse_listen(&printed).as_ref(),
            Ok(addr),
            "{printed:?}"
        );
        // The same address through serde (the config file).
        let json = serde_json::to_string(addr).unwrap();
        assert_eq!(&serde_json::from_str::<ApiAddress>(&json).unwrap(), addr);
        assert_eq!(ApiAddress::parse_client(text).as_ref(), Ok(addr));
    }
    if !needs_lookup(text) {
        if let Ok(ApiAddress::Unix(path)) = ApiAddress::parse_client(text) {
            assert!(path.is_absolute(), "{path:?}");
        }
    }
});
