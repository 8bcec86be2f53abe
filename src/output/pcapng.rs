//! pcapng export of live events (`watch -w`). Each event's frame bytes (its
//! headers, plus --snaplen payload bytes) become one Enhanced Packet Block
//! whose captured length is what was copied and whose original length is
//! the frame's: a headers-only capture says so, as tcpdump -s would.

use std::borrow::Cow;
use std::io::Write;
use std::time::Duration;

use anyhow::{Context, Result};
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::DataLink;

use crate::bpf::types;

/// Nanosecond timestamps: if_tsresol 9 (10^-9 s).
const TSRESOL_NS: u8 = 9;

pub struct PcapNgExport<W: Write> {
    writer: PcapNgWriter<W>,
    pub written: u64,
}

impl<W: Write> PcapNgExport<W> {
    /// Writes the section header and one Ethernet interface named `ifname`.
    pub fn new(out: W, ifname: &str) -> Result<Self> {
        let mut writer = PcapNgWriter::new(out).context("writing the pcapng section header")?;
        let idb = InterfaceDescriptionBlock {
            linktype: DataLink::ETHERNET,
            snaplen: types::tcpscope_limits::TCPSCOPE_MAX_CAPTURE.0,
            options: vec![
                InterfaceDescriptionOption::IfName(Cow::Owned(ifname.to_string())),
                InterfaceDescriptionOption::IfTsResol(TSRESOL_NS),
            ],
        };
        writer.write_pcapng_block(idb).context("writing the pcapng interface block")?;
        Ok(PcapNgExport { writer, written: 0 })
    }

    /// One packet: `frame` is what was captured, `wire_len` its full length,
    /// `ts_ns` wall-clock ns since the epoch.
    pub fn write(&mut self, ts_ns: u64, frame: &[u8], wire_len: u32) -> Result<()> {
        let epb = EnhancedPacketBlock {
            interface_id: 0,
            // pcap-file writes this Duration's nanoseconds as the raw count,
            // which if_tsresol 9 makes nanoseconds.
            timestamp: Duration::from_nanos(ts_ns),
            original_len: wire_len.max(frame.len() as u32),
            data: Cow::Borrowed(frame),
            options: vec![],
        };
        self.writer.write_pcapng_block(epb).context("writing a packet to the pcapng file")?;
        self.written += 1;
        Ok(())
    }

    pub fn flush(&mut self) -> Result<()> {
        self.writer.get_mut().flush().context("flushing the pcapng file")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::Capture;

    #[test]
    fn round_trip_through_our_reader() {
        let mut buf = Vec::new();
        {
            let mut x = PcapNgExport::new(&mut buf, "veth0").unwrap();
            let f = crate::testpkt::syn_v4();
            x.write(1_700_000_000_123_456_789, &f[..40], f.len() as u32).unwrap();
            x.flush().unwrap();
        }
        let mut c = Capture::open(&buf[..]).unwrap();
        let fr = c.next_frame().unwrap().unwrap();
        assert_eq!(fr.ts_ns, 1_700_000_000_123_456_789);
        assert_eq!(fr.data.len(), 40);
        assert_eq!(fr.orig_len as usize, crate::testpkt::syn_v4().len());
        assert_eq!(c.interfaces()[0].name, "veth0");
    }
}
