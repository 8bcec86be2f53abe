//! Fuzzes the pcap/pcapng reader with the decoder behind it: a corrupt file
//! must end in an error, never a panic, a hang or a huge allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcpscope::bpf::types::packet_event;
use tcpscope::capture::Capture;
use tcpscope::decode::decode;

fuzz_target!(|data: &[u8]| {
    let Ok(mut cap) = Capture::open(data) else { return };
    let mut ev = packet_event::default();
    while let Some(Ok(f)) = cap.next_frame() {
        let _ = decode(f.link, f.data, f.orig_len, &mut ev);
    }
});
