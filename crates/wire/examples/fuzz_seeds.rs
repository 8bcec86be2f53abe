//! Writes the fuzzers' seed corpora from capture files:
//! `decode/`: one file per frame, a link-type selector byte then the frame;
//! `capture/`: the capture files themselves.
//!
//! cargo run --release -p tcpscope-wire --example fuzz_seeds -- ../shared/corpus/tcpdump fuzz/corpus

use std::path::PathBuf;

use tcpscope_wire::capture::Capture;

/// Must match LINKS in fuzz/fuzz_targets/decode.rs.
const LINKS: [u32; 9] = [1, 101, 228, 229, 113, 276, 0, 108, 147];

fn main() -> anyhow::Result<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [src, out] = args.as_slice() else { anyhow::bail!("usage: fuzz_seeds CAPTURE_DIR OUT_DIR") };
    let (dec, cap_dir) = (out.join("decode"), out.join("capture"));
    std::fs::create_dir_all(&dec)?;
    std::fs::create_dir_all(&cap_dir)?;
    let mut n = 0;
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
            std::fs::write(dec.join(format!("{name}-{i}")), seed)?;
            i += 1;
            n += 1;
        }
    }
    eprintln!("fuzz_seeds: {n} frame seeds in {}", dec.display());
    Ok(())
}
