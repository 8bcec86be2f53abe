//! Fuzzes the packet decoder: any bytes, under every link type, must decode
//! or be refused with a reason, never panic or loop; and whatever decodes
//! must also format as text and JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcpscope_wire::decode::{decode, LinkType, Outcome};
use tcpscope_wire::format::{Emitter, Format, Packet};
use tcpscope_wire::types::packet_event;

const LINKS: [u32; 9] = [1, 101, 228, 229, 113, 276, 0, 108, 147];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, frame)) = data.split_first() else { return };
    let link = LinkType::from_linktype(LINKS[usize::from(sel) % LINKS.len()]);
    let mut ev = packet_event::default();
    // Also pretend the wire frame was longer than what was captured.
    let orig = frame.len() as u32 + u32::from(sel >> 4) * 100;
    if decode(link, frame, orig, &mut ev) == Outcome::Tcp {
        let payload = tcpscope_wire::payload_of(&ev, frame, u32::from(sel));
        for format in [Format::Json, Format::Text] {
            let mut out = Emitter::new(Vec::new(), format);
            let p = Packet {
                ev: &ev,
                ts_ns: u64::from(sel),
                payload,
                frame: Some(1),
                netns: Some(1),
                ifname: "fuzz",
            };
            out.emit(&p).expect("writing to a Vec");
        }
    }
});
