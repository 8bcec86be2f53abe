//! Fuzzes the L7 hints: any bytes as a client's first bytes, whole and cut
//! into segments sent in a shuffled order (some twice), must be identified,
//! wanted more of, or given up on; never panic, loop or grow past the
//! stream limit. With the selector's top bit set, the input is instead a
//! custom protocols file (TOML) up to its first NUL and bytes after it: a
//! file is read or refused with an error, never a panic, and bytes are
//! then identified with what it describes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcpscope_wire::l7::track::Tracker;
use tcpscope_wire::l7::{identify, MAX_STREAM};
use tcpscope_wire::types::packet_event;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, bytes)) = data.split_first() else { return };
    if sel & 0x80 != 0 {
        let (text, rest) = bytes.split_at(bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len()));
        let Ok(text) = std::str::from_utf8(text) else { return };
        if let Ok(p) = tcpscope_wire::l7::custom::Protocols::parse(text, "fuzz.toml") {
            let _ = tcpscope_wire::l7::identify_with(&p, rest.get(1..).unwrap_or_default(), 7000, sel & 1 == 1);
        }
        return;
    }
    let port = [80u16, 443, 53, 22, 8080][usize::from(sel) % 5];
    let _ = identify(bytes, port, sel & 1 == 1);
    let mut ev = packet_event { ip_version: 4, sport: 40000, dport: port, seq: 1000, flags_raw: 0x02, ..Default::default() };
    let mut t = Tracker::default();
    let _ = t.packet(&ev, 1, &[]);
    // Segments of 1 + sel/8 bytes, in an order the selector shuffles.
    let size = 1 + usize::from(sel >> 3);
    let pieces: Vec<(usize, &[u8])> = bytes.chunks(size).enumerate().map(|(i, c)| (i * size, c)).collect();
    let mut order: Vec<usize> = (0..pieces.len()).collect();
    order.sort_by_key(|i| (i.wrapping_mul(usize::from(sel) | 1)) % 7);
    order.extend(order.clone().iter().take(2));
    for (n, i) in order.into_iter().enumerate() {
        let (off, p) = pieces[i];
        ev.flags_raw = 0x10;
        ev.seq = 1001u32.wrapping_add(off as u32);
        if let Some(r) = t.packet(&ev, 2 + n as u64, p) {
            assert!(r.l7.first_bytes.as_ref().is_none_or(|h| h.len() <= 32));
        }
    }
    for r in t.finish(1_000) {
        assert!(r.l7.gave_up.is_some());
    }
    assert!(bytes.len() <= 65536 || MAX_STREAM > 0);
});
