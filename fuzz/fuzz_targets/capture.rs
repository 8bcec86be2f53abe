//! Fuzzes the pcap/pcapng reader with the decoder behind it: a corrupt file
//! must end in an error, never a panic, a hang or a huge allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcpscope_wire::capture::Capture;
use tcpscope_wire::decode::decode;
use tcpscope_wire::types::packet_event;

fuzz_target!(|data: &[u8]| {
    let Ok(mut cap) = Capture::open(data) else { return };
    let mut ev = packet_event::default();
    while let Some(Ok(f)) = cap.next_frame() {
        let _ = decode(f.link, f.data, f.orig_len, &mut ev);
    }
});
