//! Every input in fuzz/regressions/ through the fuzz targets' code paths:
//! each must be decoded or refused with a reason, without panicking.

use tcpscope::bpf::types::packet_event;
use tcpscope::capture::Capture;
use tcpscope::decode::{decode, LinkType, Outcome};

const LINKS: [u32; 9] = [1, 101, 228, 229, 113, 276, 0, 108, 147];

#[test]
fn regression_inputs_are_handled() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let data = std::fs::read(&path).unwrap();
        let mut ev = packet_event::default();
        if let Some(rest) = name.strip_prefix("decode-") {
            let (sel, frame) = data.split_first().expect("selector byte");
            let link = LinkType::from_linktype(LINKS[usize::from(*sel) % LINKS.len()]);
            let outcome = decode(link, frame, frame.len() as u32, &mut ev);
            assert!(!matches!(outcome, Outcome::Tcp) || ev.hdr_len > 0, "{rest}: {outcome:?}");
            n += 1;
        } else if name.starts_with("capture-") {
            let mut frames = 0;
            let mut errors = 0;
            if let Ok(mut cap) = Capture::open(&data[..]) {
                while let Some(r) = cap.next_frame() {
                    match r {
                        Ok(f) => {
                            let _ = decode(f.link, f.data, f.orig_len, &mut ev);
                            frames += 1;
                        }
                        Err(_) => {
                            errors += 1;
                            break;
                        }
                    }
                }
            } else {
                errors += 1;
            }
            // These files are corrupt on purpose: refused, not decoded.
            assert_eq!((frames, errors), (0, 1), "{name}");
            n += 1;
        }
    }
    assert!(n >= 4, "{n} regression inputs");
}

#[test]
fn nine_extension_headers_are_refused_by_name() {
    let data = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/decode-ipv6-nine-ext"),
    )
    .unwrap();
    let mut ev = packet_event::default();
    let o = decode(LinkType::Ethernet, &data[1..], data.len() as u32 - 1, &mut ev);
    assert_eq!(
        o,
        Outcome::Malformed(tcpscope::bpf::types::tcpscope_malformed::MALFORMED_IPV6_EXT_TOO_MANY.0 as u8)
    );
}
