//! Image references, digests, platforms and RFC 3339 times: strings from the command line,
//! manifests, configs and registries.
#![no_main]

use std::str::FromStr;

use libfuzzer_sys::fuzz_target;
use strata_oci::platform::Platform;
use strata_oci::timefmt::parse_rfc3339;
use strata_oci::{Digest, Reference};

fuzz_target!(|s: &str| {
    if let Ok(r) = Reference::from_str(s) {
        // Everything derived from a parsed reference must work too, and round-trip.
        let _ = r.familiar_repository();
        let _ = r.full_repository();
        let _ = r.tag_key();
        let _ = r.manifest_reference();
        let _ = r.with_tag("latest");
        let _ = r.with_digest(Digest::of(s.as_bytes()));
    }
    if let Ok(d) = Digest::from_str(s) {
        assert_eq!(Digest::from_str(&d.to_string()).ok(), Some(d));
        let _ = d.short();
    }
    let _ = Platform::parse(s);
    let _ = parse_rfc3339(s);
});
