//! tcpscope's packet side, without BPF: the decoder that mirrors the kernel
//! parser (`decode`), the pcap/pcapng reader (`capture`), the owned packet
//! record and its JSON schema (`model`), the names of the parser's enums
//! (`names`), and crafted test packets (`testpkt`). It builds in seconds
//! with neither clang nor libbpf, so `read`'s decoding and the fuzz targets
//! rest on it alone.
//!
//! The kernel event layout is not written here by hand: `types` is
//! generated from bpf/common_kern_user.h (see its header).

pub mod capture;
pub mod decode;
pub mod format;
pub mod l7;
pub mod model;
pub mod names;
pub mod testpkt;
pub mod types;

// SAFETY: a #[repr(C)] struct of integers and arrays of integers, generated
// from BTF; every bit pattern is a valid value.
unsafe impl plain::Plain for types::packet_event {}

/// The payload bytes the user asked for (--snaplen) out of captured frame
/// bytes; None without --snaplen.
pub fn payload_of<'a>(ev: &types::packet_event, frame: &'a [u8], snaplen: u32) -> Option<&'a [u8]> {
    if snaplen == 0 || ev.malformed != 0 {
        return None;
    }
    let start = usize::from(ev.payload_off);
    let len = (ev.payload_len as usize).min(snaplen as usize);
    let end = frame.len().min(start.saturating_add(len));
    Some(frame.get(start..end).unwrap_or(&[]))
}
