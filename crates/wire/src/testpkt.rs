//! Crafted frames for benchmarks, the demo's self-check and tests. They are
//! encoded with etherparse, independently of both tcpscope decoders.

use etherparse::{IpHeaders, PacketBuilder, PacketBuilderStep, TcpOptionElement};

pub const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
pub const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 2];
pub const V4_SRC: [u8; 4] = [198, 18, 0, 1];
pub const V4_DST: [u8; 4] = [198, 18, 0, 2];
pub const V6_SRC: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
pub const V6_DST: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

/// The options of a Linux SYN: MSS, SACK-permitted, timestamps, NOP, wscale.
pub fn linux_syn_options() -> [TcpOptionElement; 5] {
    [
        TcpOptionElement::MaximumSegmentSize(1460),
        TcpOptionElement::SelectiveAcknowledgementPermitted,
        TcpOptionElement::Timestamp(0x0102_0304, 0),
        TcpOptionElement::Noop,
        TcpOptionElement::WindowScale(7),
    ]
}

fn finish(builder: etherparse::PacketBuilderStep<etherparse::TcpHeader>, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut out, payload).expect("writing to a Vec cannot fail");
    out
}

/// A SYN from port 40000 with `opts`, on top of the given L2/L3 builder.
fn syn(
    ip: PacketBuilderStep<IpHeaders>,
    dport: u16,
    seq: u32,
    window: u16,
    opts: &[TcpOptionElement],
) -> Vec<u8> {
    finish(ip.tcp(40000, dport, seq, window).syn().options(opts).expect("options fit"), &[])
}

/// IPv4 SYN with the full Linux option set.
pub fn syn_v4() -> Vec<u8> {
    syn_v4_to(80)
}

/// As `syn_v4`, to port `dport`.
pub fn syn_v4_to(dport: u16) -> Vec<u8> {
    syn(
        PacketBuilder::ethernet2(MAC_A, MAC_B).ipv4(V4_SRC, V4_DST, 64),
        dport,
        1000,
        64240,
        &linux_syn_options(),
    )
}

/// IPv4 SYN with the options in Windows' order (MSS, NOP, WS, NOP, NOP,
/// SACK-permitted): not a fast-path layout, so the general parser runs.
pub fn syn_v4_windows_options() -> Vec<u8> {
    let opts = [
        TcpOptionElement::MaximumSegmentSize(1460),
        TcpOptionElement::Noop,
        TcpOptionElement::WindowScale(8),
        TcpOptionElement::Noop,
        TcpOptionElement::Noop,
        TcpOptionElement::SelectiveAcknowledgementPermitted,
    ];
    syn(PacketBuilder::ethernet2(MAC_A, MAC_B).ipv4(V4_SRC, V4_DST, 128), 80, 1000, 64240, &opts)
}

/// IPv4 ACK without options or payload.
pub fn ack_v4() -> Vec<u8> {
    let b =
        PacketBuilder::ethernet2(MAC_A, MAC_B).ipv4(V4_SRC, V4_DST, 64).tcp(40000, 80, 1001, 502).ack(5001);
    finish(b, &[])
}

/// IPv6 SYN with the full Linux option set.
pub fn syn_v6() -> Vec<u8> {
    syn(
        PacketBuilder::ethernet2(MAC_A, MAC_B).ipv6(V6_SRC, V6_DST, 64),
        443,
        2000,
        64800,
        &linux_syn_options(),
    )
}

/// 802.1Q-tagged IPv4 SYN.
pub fn syn_vlan() -> Vec<u8> {
    let ip = PacketBuilder::ethernet2(MAC_A, MAC_B)
        .single_vlan(etherparse::VlanId::try_new(100).expect("valid id"))
        .ipv4(V4_SRC, V4_DST, 64);
    syn(ip, 80, 1000, 64240, &linux_syn_options())
}

/// IPv4 UDP: not TCP.
pub fn udp_v4() -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC_A, MAC_B).ipv4(V4_SRC, V4_DST, 64).udp(5353, 53);
    let payload = [0u8; 18];
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, &payload).expect("writing to a Vec cannot fail");
    out
}

/// Minimum Ethernet frames are 60 bytes: pads short frames with zeros, as a
/// NIC would, so that the decoders must use the IP length, not the frame's.
pub fn pad_to_min_frame(mut frame: Vec<u8>) -> Vec<u8> {
    if frame.len() < 60 {
        frame.resize(60, 0);
    }
    frame
}

/// A TLS ClientHello record like a current browser's: SNI `sni`, ALPN h2
/// and http/1.1, TLS 1.3 and 1.2, and, with `pq`, an X25519MLKEM768 key
/// share (1,216 bytes) beside the x25519 one and a padding extension
/// (as Chrome's), which make the record 1,718 bytes and the name: more than one segment
/// of a 1,460-byte MSS.
pub fn client_hello(sni: &str, pq: bool) -> Vec<u8> {
    client_hello_with(sni, pq, &[])
}

/// As `client_hello`, with `extra` extensions (type, body) after the
/// others: an ECH outer ClientHello carries encrypted_client_hello
/// (0xfe0d).
pub fn client_hello_with(sni: &str, pq: bool, extra: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut extensions = hello_extensions(sni, pq);
    extensions.extend(extra.iter().cloned());
    client_hello_from(&extensions)
}

fn u16s(v: &[u16]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_be_bytes()).collect()
}

fn with_len16(body: &[u8]) -> Vec<u8> {
    [&(body.len() as u16).to_be_bytes()[..], body].concat()
}

/// The extensions (type, body) of `client_hello`, in its order: server
/// name, groups, signature algorithms, ALPN, versions, key shares, and
/// with `pq` a padding of 300 bytes.
pub fn hello_extensions(sni: &str, pq: bool) -> Vec<(u16, Vec<u8>)> {
    let name = [&[0u8][..], &with_len16(sni.as_bytes())].concat();
    let groups: &[u16] = if pq { &[0x11ec, 0x001d, 0x0017] } else { &[0x001d, 0x0017] };
    let mut shares = Vec::new();
    if pq {
        shares.extend([&0x11ecu16.to_be_bytes()[..], &with_len16(&[0x5a; 1216])].concat());
    }
    shares.extend([&0x001du16.to_be_bytes()[..], &with_len16(&[0x33; 32])].concat());
    let alpn = [&[2u8][..], b"h2", &[8], b"http/1.1"].concat();
    let mut out = vec![
        (0x0000, with_len16(&name)),
        (0x000a, with_len16(&u16s(groups))),
        (0x000d, with_len16(&u16s(&[0x0403, 0x0804, 0x0401]))),
        (0x0010, with_len16(&alpn)),
        (0x002b, [&[4u8][..], &u16s(&[0x0304, 0x0303])].concat()),
        (0x0033, with_len16(&shares)),
    ];
    if pq {
        out.push((0x0015, vec![0; 300]));
    }
    out
}

/// A ClientHello record with these extensions (type, body), in this order.
pub fn client_hello_from(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let extensions: Vec<u8> =
        extensions.iter().flat_map(|(t, b)| [&t.to_be_bytes()[..], &with_len16(b)].concat()).collect();
    let mut hello = vec![0x03, 0x03];
    hello.extend_from_slice(&[0x11; 32]); // random
    hello.push(32);
    hello.extend_from_slice(&[0x22; 32]); // session id
    hello.extend(with_len16(&u16s(&[0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f])));
    hello.extend_from_slice(&[1, 0]); // compression: null
    hello.extend(with_len16(&extensions));
    let len = hello.len() as u32;
    let handshake = [&[1u8][..], &len.to_be_bytes()[1..], &hello].concat();
    [&[0x16u8, 0x03, 0x01][..], &with_len16(&handshake)].concat()
}

/// A frame of `payload` from the client (198.18.0.1:40000) to the server
/// (198.18.0.2:`dport`), sequence number `seq`, ACK and PSH set.
pub fn data_v4(dport: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(V4_SRC, V4_DST, 64)
        .tcp(40000, dport, seq, 502)
        .ack(5001)
        .psh();
    finish(b, payload)
}
