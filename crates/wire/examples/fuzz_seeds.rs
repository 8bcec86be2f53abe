//! Writes the fuzzers' seed corpora from capture files:
//! `decode/`: one file per frame, a link-type selector byte then the frame;
//! `capture/`: the capture files themselves;
//! `l7/`: a selector byte then each TCP payload that starts a known kind of
//! message (HTTP, TLS, SSH, DNS) or any other, at most 200.
//!
//! cargo run --release -p tcpscope-wire --example fuzz_seeds -- ../shared/corpus/tcpdump fuzz/corpus

use std::path::PathBuf;

use tcpscope_wire::capture::Capture;

/// Must match LINKS in fuzz/fuzz_targets/decode.rs.
const LINKS: [u32; 9] = [1, 101, 228, 229, 113, 276, 0, 108, 147];

fn main() -> anyhow::Result<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [src, out] = args.as_slice() else { anyhow::bail!("usage: fuzz_seeds CAPTURE_DIR OUT_DIR") };
    let (dec, cap_dir, l7) = (out.join("decode"), out.join("capture"), out.join("l7"));
    std::fs::create_dir_all(&dec)?;
    std::fs::create_dir_all(&cap_dir)?;
    std::fs::create_dir_all(&l7)?;
    let mut n = 0;
    let mut payloads = 0;
    for entry in std::fs::read_dir(src)? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        std::fs::copy(&path, cap_dir.join(&name))?;
        let Ok(mut cap) = Capture::open(std::fs::File::open(&path)?) else { continue };
        let mut i = 0;
        while let Some(Ok(f)) = cap.next_frame() {
            let Some(sel) = LINKS.iter().position(|l| *l == f.link.linktype()) else { continue };
            let mut seed = vec![sel as u8];
            seed.extend_from_slice(f.data);
            let mut ev = tcpscope_wire::types::packet_event::default();
            let decoded = tcpscope_wire::decode::decode(f.link, f.data, f.orig_len, &mut ev);
            if decoded == tcpscope_wire::decode::Outcome::Tcp && payloads < 200 {
                if let Some(p) = tcpscope_wire::payload_of(&ev, f.data, 65535).filter(|p| !p.is_empty()) {
                    let mut s = vec![(payloads % 256) as u8];
                    s.extend_from_slice(p);
                    std::fs::write(l7.join(format!("{name}-{i}")), s)?;
                    payloads += 1;
                }
            }
            std::fs::write(dec.join(format!("{name}-{i}")), seed)?;
            i += 1;
            n += 1;
        }
    }
    // The custom protocols branch of the l7 target: selector 0x80, the
    // shipped example file, a NUL, then a message it describes.
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/l7/protocols.toml");
    if let Ok(text) = std::fs::read(&example) {
        let mut seed = vec![0x80];
        seed.extend_from_slice(&text);
        seed.extend_from_slice(b"\0MC\x01\x02\x01\x02\x03\x04\x00\x06status");
        std::fs::write(l7.join("custom-protocols"), seed)?;
    }
    eprintln!("fuzz_seeds: {n} frame seeds in {}", dec.display());
    Ok(())
}
