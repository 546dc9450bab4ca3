//! The eStargz footer and the gzip/tar member holding `stargz.index.json`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_formats::estargz::{FOOTER_LEN, extract_toc_json, index, parse_footer};

fuzz_target!(|data: &[u8]| {
    let footer_len = usize::try_from(FOOTER_LEN).unwrap_or(51);
    if data.len() >= footer_len {
        let (member, footer) = data.split_at(data.len() - footer_len);
        if let Ok(offset) = parse_footer(footer)
            && let Ok(json) = extract_toc_json(member)
        {
            let _ = index(&json, offset);
        }
    }
    let _ = parse_footer(data);
    let _ = extract_toc_json(data);
});
