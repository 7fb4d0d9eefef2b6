//! The S3 credential chain's parsers (shared-file INI, STS XML, container
//! and instance-metadata JSON, the full container URI check): no input
//! panics, and whatever parses holds non-empty keys (the entry point checks).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::fuzz_s3_credentials;

fuzz_target!(|data: &[u8]| {
    fuzz_s3_credentials(data);
});
