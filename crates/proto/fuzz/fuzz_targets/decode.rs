//! Any bytes the guest sends: decoding must return, never panic, and agree with the reader.
#![no_main]

use bulkhead_proto::{decode, encode, FrameReader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let sliced = decode(data);
    let streamed = FrameReader::new(data).read_frame();
    if let Ok(Some((frame, _))) = sliced {
        assert_eq!(streamed.ok().flatten().as_ref(), Some(&frame));
        let mut again = Vec::new();
        encode(&frame, &mut again).expect("a decoded frame re-encodes");
        assert_eq!(decode(&again).ok().flatten().map(|(f, _)| f), Some(frame));
    }
});
