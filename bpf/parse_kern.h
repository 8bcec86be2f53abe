/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Kernel-only packet parser, shared by the XDP and TC ingress programs.
 *
 * Shape taken from xdp-tutorial's parsing_helpers.h (a cursor walks the packet,
 * one parse_<hdr>() per header), with its gaps closed: IHL and data offset are
 * checked, every malformed case returns its own reason, and every loop has a
 * fixed bound. The Rust decoder (crates/wire/src/decode) implements the same
 * rules, and tests/kernel_vs_user.rs holds the two equal on every corpus
 * packet and 100,000 mutated ones.
 */
#ifndef TCPSCOPE_PARSE_KERN_H
#define TCPSCOPE_PARSE_KERN_H

#include "common_kern_user.h"

#include "net_defs_kern.h"
#define IPV4_FLAG_DF 0x4000
#define IPV6_FRAG_OFFSET_MASK 0xfff8
#define IPV6_FRAG_MF 0x0001
#define IPV6_TLV_JUMBO 0xC2
#define IPV6_JUMBO_OPT_LEN 4
#define TCP_MIN_HLEN 20
#define TCP_MAX_OPT_LEN 40

#define TCPOPT_EOL 0
#define TCPOPT_NOP 1
#define TCPOPT_MSS 2
#define TCPOPT_WSCALE 3
#define TCPOPT_SACK_PERM 4
#define TCPOPT_SACK 5
#define TCPOPT_TIMESTAMP 8
#define TCPOPT_MPTCP 30
#define TCPOPT_FASTOPEN 34
#define TCPOPT_EXP 254
#define TCPOLEN_MSS 4
#define TCPOLEN_WSCALE 3
#define TCPOLEN_SACK_PERM 2
#define TCPOLEN_TIMESTAMP 10
#define TCPOLEN_SACK_BLOCK 8

/*
 * One convention, as xdp-tutorial's parsers have one: every parse_<hdr>()
 * advances the cursor past its header, leaves the header's fields in ev,
 * and returns what comes next: an enum parse_result for IP and TCP (on
 * PARSE_MALFORMED, ev->malformed says why), the ethertype for Ethernet (a
 * negative value is minus the reason: see parse_ethhdr). The option walkers below are
 * helpers of parse_tcp(), not parsers: they return a malformed reason, or
 * whether they handled the options.
 */
enum parse_result {
	PARSE_OK = 0,      /* parsed, go on: after IP, the next header is TCP;
	                    * after TCP, done (ev->malformed may still be set) */
	PARSE_NON_TCP,     /* not IP, or IP carrying something else */
	PARSE_FRAGMENT,    /* non-first IP fragment */
	PARSE_MALFORMED,   /* broken below TCP: ev->malformed says why */
};

struct hdr_cursor {
	void *pos;
};

struct l3_info {
	__u32 ip_payload_len; /* bytes after the IP header(s), from the IP length */
	__u16 frag_off;       /* fragment offset, in 8-byte units */
	__u8 proto;
};

static __always_inline __u16 load_be16(const void *p)
{
	return bpf_ntohs(*(const __u16 *)p);
}

/* The option bytes of one TCP header, copied out of the packet. A struct so
 * that the verifier knows the size behind a pointer to it; 64 bytes so that
 * any index masked with 0x3f stays inside. */
struct tcp_opt_buf {
	__u8 b[64];
	/* Parse position. Kept in memory, not a local, on purpose: the verifier
	 * does not track values behind a global function's pointer argument, so
	 * every path through one option reaches the next round in the same
	 * state and is pruned. A local would carry a different range per path
	 * and the loop would explode past the verifier's limits. */
	__u32 off;
	__u32 len; /* option bytes in b[], <= 40; in memory for the same reason */
};

/* Byte i of an option buffer. The empty asm hides i's range from clang, so
 * it keeps the mask, which is what proves the read in bounds to the verifier
 * (clang would drop it as redundant, and the verifier cannot see why). */
static __always_inline __u8 opt_byte(const struct tcp_opt_buf *buf, __u64 i)
{
	asm volatile("" : "+r"(i));
	return buf->b[i & 0x3f];
}

static __always_inline __u32 load_be32_at(const struct tcp_opt_buf *buf, __u32 i)
{
	return ((__u32)opt_byte(buf, i) << 24) | ((__u32)opt_byte(buf, i + 1) << 16) |
	       ((__u32)opt_byte(buf, i + 2) << 8) | opt_byte(buf, i + 3);
}

/* Ethernet and up to TCPSCOPE_MAX_VLAN tags: the inner ethertype (host
 * order), or -reason. Not through ev->malformed and a sentinel, nor an
 * out-argument: each of those made the guard's full-inspection XDP program
 * (`guard --inspect`) too complex for the verifier, past 1M instructions
 * (tests/guard.rs, inspect_keeps_every_counter_and_still_guards). */
static __always_inline int parse_ethhdr(struct hdr_cursor *nh, void *data_end,
					struct packet_event *ev)
{
	struct ethhdr *eth = nh->pos;
	if ((void *)(eth + 1) > data_end) {
		return -MALFORMED_ETH_TRUNCATED;
	}
	nh->pos = eth + 1;
	__u16 proto = bpf_ntohs(eth->h_proto);

#pragma unroll
	for (int i = 0; i < TCPSCOPE_MAX_VLAN; i++) {
		if (proto != ETH_P_8021Q && proto != ETH_P_8021AD)
			return proto;
		struct vlan_hdr *vh = nh->pos;
		if ((void *)(vh + 1) > data_end) {
			return -MALFORMED_VLAN_TRUNCATED;
		}
		ev->vlan[i] = bpf_ntohs(vh->h_vlan_TCI) & VLAN_VID_MASK;
		ev->vlan_count = i + 1;
		proto = bpf_ntohs(vh->h_vlan_encapsulated_proto);
		nh->pos = vh + 1;
	}
	if (proto == ETH_P_8021Q || proto == ETH_P_8021AD) {
		return -MALFORMED_VLAN_TOO_DEEP;
	}
	return proto;
}

/* PARSE_OK when the next header is TCP, else another parse_result. l3_len is the packet's
 * length from the IP header on, from the whole frame: at TC, data_end ends
 * the linear part only, and a GSO/BIG TCP packet (IP length 0) is longer. */
static __always_inline int parse_ipv4(struct hdr_cursor *nh, void *data_end,
				      struct packet_event *ev, struct l3_info *l3, __u32 l3_len)
{
	struct iphdr *iph = nh->pos;
	if ((void *)(iph + 1) > data_end) {
		ev->malformed = MALFORMED_IPV4_TRUNCATED;
		return PARSE_MALFORMED;
	}
	if (iph->version != 4) {
		ev->malformed = MALFORMED_IPV4_BAD_VERSION;
		return PARSE_MALFORMED;
	}
	__u32 hlen = iph->ihl * 4;
	if (hlen < sizeof(*iph)) {
		ev->malformed = MALFORMED_IPV4_BAD_IHL;
		return PARSE_MALFORMED;
	}
	if (nh->pos + hlen > data_end) {
		ev->malformed = MALFORMED_IPV4_TRUNCATED;
		return PARSE_MALFORMED;
	}
	__u16 tot_len = bpf_ntohs(iph->tot_len);
	if (tot_len == 0) {
		/* TSO/GSO super-packets carry 0: the frame gives the length. */
		ev->ip_flags |= IPF_JUMBO;
		l3->ip_payload_len = l3_len > hlen ? l3_len - hlen : 0;
	} else if (tot_len < hlen) {
		ev->malformed = MALFORMED_IPV4_BAD_TOTAL_LEN;
		return PARSE_MALFORMED;
	} else {
		l3->ip_payload_len = tot_len - hlen;
	}

	__u16 frag = bpf_ntohs(iph->frag_off);
	ev->ip_version = 4;
	ev->ip_len = tot_len;
	ev->ttl = iph->ttl;
	ev->dscp = iph->tos >> 2;
	ev->ecn = iph->tos & 0x3;
	ev->ip_id = bpf_ntohs(iph->id);
	ev->ip_flags |= IPF_HAS_ID;
	if (frag & IPV4_FLAG_DF)
		ev->ip_flags |= IPF_DF;
	if (frag & IPV4_FLAG_MF)
		ev->ip_flags |= IPF_FRAG;
	__builtin_memcpy(ev->src, &iph->saddr, 4);
	__builtin_memcpy(ev->dst, &iph->daddr, 4);
	l3->proto = iph->protocol;
	l3->frag_off = frag & IPV4_FRAG_OFFSET_MASK;
	nh->pos += hlen;
	if (iph->protocol != IPPROTO_TCP_NUM)
		return PARSE_NON_TCP;
	if (frag & IPV4_FRAG_OFFSET_MASK)
		return PARSE_FRAGMENT;
	return PARSE_OK;
}

static __always_inline int parse_ipv6(struct hdr_cursor *nh, void *data_end,
				      struct packet_event *ev, struct l3_info *l3, __u32 l3_len)
{
	struct ipv6hdr *ip6 = nh->pos;
	if ((void *)(ip6 + 1) > data_end) {
		ev->malformed = MALFORMED_IPV6_TRUNCATED;
		return PARSE_MALFORMED;
	}
	if (ip6->version != 6) {
		ev->malformed = MALFORMED_IPV6_BAD_VERSION;
		return PARSE_MALFORMED;
	}
	__u16 plen = bpf_ntohs(ip6->payload_len);
	ev->ip_version = 6;
	ev->ip_len = plen;
	ev->ttl = ip6->hop_limit;
	/* Traffic class straddles the first two bytes: version(4) tc(8) flow(20). */
	__u8 tclass = (ip6->priority << 4) | (ip6->flow_lbl[0] >> 4);
	ev->dscp = tclass >> 2;
	ev->ecn = tclass & 0x3;
	__builtin_memcpy(ev->src, &ip6->saddr, 16);
	__builtin_memcpy(ev->dst, &ip6->daddr, 16);
	nh->pos = ip6 + 1;

	__u32 remaining;
	if (plen == 0) {
		/* Jumbogram (RFC 2675) or BIG TCP: length from the frame. */
		ev->ip_flags |= IPF_JUMBO;
		remaining = l3_len > sizeof(*ip6) ? l3_len - sizeof(*ip6) : 0;
	} else {
		remaining = plen;
	}

	__u8 next = ip6->nexthdr;
	if (plen == 0 && next == IPV6_HOPOPTS) {
		/* RFC 2675 jumbogram: the hop-by-hop header (always first) holds
		 * the real length, of everything after the IPv6 header. Checked
		 * once here, not in the loop, to keep the verifier's paths few. */
		__u8 *hbh = nh->pos;
		if ((void *)(hbh + 8) <= data_end && hbh[2] == IPV6_TLV_JUMBO &&
		    hbh[3] == IPV6_JUMBO_OPT_LEN)
			remaining = ((__u32)hbh[4] << 24) | ((__u32)hbh[5] << 16) |
				    ((__u32)hbh[6] << 8) | hbh[7];
	}
#pragma unroll
	for (int i = 0; i < TCPSCOPE_MAX_IPV6_EXT; i++) {
		if (next != IPV6_HOPOPTS && next != IPV6_ROUTING &&
		    next != IPV6_DSTOPTS && next != IPV6_FRAGMENT)
			goto done;
		__u8 *ext = nh->pos;
		if ((void *)(ext + 8) > data_end) {
			ev->malformed = MALFORMED_IPV6_EXT_TRUNCATED;
			return PARSE_MALFORMED;
		}
		__u32 elen;
		if (next == IPV6_FRAGMENT) {
			struct frag_hdr *fh = (void *)ext;
			__u16 off = bpf_ntohs(fh->frag_off);
			ev->ip_id = bpf_ntohl(fh->identification);
			ev->ip_flags |= IPF_HAS_ID;
			if (off & IPV6_FRAG_MF)
				ev->ip_flags |= IPF_FRAG;
			if (off & IPV6_FRAG_OFFSET_MASK) {
				l3->proto = fh->nexthdr;
				l3->frag_off = off >> 3;
				return fh->nexthdr == IPPROTO_TCP_NUM ? PARSE_FRAGMENT
								      : PARSE_NON_TCP;
			}
			elen = 8;
		} else {
			elen = ((__u32)ext[1] + 1) * 8;
		}
		if (elen > remaining) {
			ev->malformed = MALFORMED_IPV6_EXT_TRUNCATED;
			return PARSE_MALFORMED;
		}
		next = ext[0];
		remaining -= elen;
		nh->pos = ext + elen;
	}
	if (next == IPV6_HOPOPTS || next == IPV6_ROUTING || next == IPV6_DSTOPTS ||
	    next == IPV6_FRAGMENT) {
		ev->malformed = MALFORMED_IPV6_EXT_TOO_MANY;
		return PARSE_MALFORMED;
	}
done:
	l3->proto = next;
	l3->ip_payload_len = remaining;
	return next == IPPROTO_TCP_NUM ? PARSE_OK : PARSE_NON_TCP;
}


/*
 * TCP options in buf->b[0..buf->len), buf->len <= 40. Returns 0 or a malformed
 * reason; options parsed before a malformed one are kept.
 *
 * A global (not inlined) function on purpose: the verifier checks it once, on
 * its own, instead of once per path through the caller. Inlined, the option
 * loop multiplied the caller's states past the 1M-instruction limit. It reads
 * a copy of the options, so the XDP and TC programs share it.
 */
__noinline int walk_tcp_options(struct tcp_opt_buf *buf, struct packet_event *ev)
{
	if (!buf || !ev)
		return 0;

	buf->off = 0;
	/* Every round consumes at least one byte: 40 rounds cover 40 bytes. */
	for (int round = 0; round < TCP_MAX_OPT_LEN; round++) {
		/* volatile: clang must not keep them in registers (see struct). */
		__u32 off = *(volatile __u32 *)&buf->off;
		__u32 opt_len = *(volatile __u32 *)&buf->len;
		if (opt_len > TCP_MAX_OPT_LEN)
			return MALFORMED_TCP_OPT_OVERRUN;
		if (off >= opt_len)
			break;
		__u8 kind = opt_byte(buf, off);
		if (kind == TCPOPT_EOL)
			break;
		if (kind == TCPOPT_NOP) {
			*(volatile __u32 *)&buf->off = off + 1;
			continue;
		}
		if (off + 2 > opt_len)
			return MALFORMED_TCP_OPT_OVERRUN;
		__u32 len = opt_byte(buf, off + 1);
		if (len < 2)
			return MALFORMED_TCP_OPT_BAD_LEN;
		if (off + len > opt_len)
			return MALFORMED_TCP_OPT_OVERRUN;
		__u32 o = off;

		switch (kind) {
		case TCPOPT_MSS:
			if (len != TCPOLEN_MSS)
				return MALFORMED_TCP_OPT_BAD_SIZE;
			ev->mss = ((__u16)opt_byte(buf, o + 2) << 8) | opt_byte(buf, o + 3);
			ev->opt_present |= OPT_MSS;
			break;
		case TCPOPT_WSCALE:
			if (len != TCPOLEN_WSCALE)
				return MALFORMED_TCP_OPT_BAD_SIZE;
			ev->wscale = opt_byte(buf, o + 2);
			ev->opt_present |= OPT_WSCALE;
			break;
		case TCPOPT_SACK_PERM:
			if (len != TCPOLEN_SACK_PERM)
				return MALFORMED_TCP_OPT_BAD_SIZE;
			ev->opt_present |= OPT_SACK_PERM;
			break;
		case TCPOPT_TIMESTAMP:
			if (len != TCPOLEN_TIMESTAMP)
				return MALFORMED_TCP_OPT_BAD_SIZE;
			ev->ts_val = load_be32_at(buf, o + 2);
			ev->ts_ecr = load_be32_at(buf, o + 6);
			ev->opt_present |= OPT_TS;
			break;
		case TCPOPT_SACK: {
			if (len < 2 + TCPOLEN_SACK_BLOCK || (len - 2) % TCPOLEN_SACK_BLOCK)
				return MALFORMED_TCP_OPT_BAD_SIZE;
			__u32 n = (len - 2) / TCPOLEN_SACK_BLOCK;
			for (int b = 0; b < TCPSCOPE_MAX_SACK; b++) {
				if (b >= n)
					break;
				__u32 at = o + 2 + b * TCPOLEN_SACK_BLOCK;
				ev->sack[b][0] = load_be32_at(buf, at);
				ev->sack[b][1] = load_be32_at(buf, at + 4);
			}
			ev->sack_count = n;
			ev->opt_present |= OPT_SACK;
			break;
		}
		default:
			ev->other_kinds[kind >> 3] |= 1 << (kind & 7);
			ev->opt_present |= OPT_OTHER;
			if (kind == TCPOPT_MPTCP && len >= 3) {
				ev->mptcp_subtype = opt_byte(buf, o + 2) >> 4;
				ev->opt_present |= OPT_MPTCP;
			} else if (kind == TCPOPT_FASTOPEN) {
				ev->tfo_cookie_len = len - 2;
				ev->opt_present |= OPT_TFO;
			} else if (kind == TCPOPT_EXP && len >= 4 && opt_byte(buf, o + 2) == 0xF9 &&
				   opt_byte(buf, o + 3) == 0x89) {
				ev->tfo_cookie_len = len - 4; /* RFC 7413 experimental form */
				ev->opt_present |= OPT_TFO;
			}
		}
		*(volatile __u32 *)&buf->off = off + len;
	}
	return 0;
}

/*
 * Fast path for the two option layouts that make up nearly all Linux
 * traffic, read in place with constant offsets:
 *   NOP NOP TS                       (12 bytes, every segment after the SYN)
 *   MSS SACK_PERM TS NOP WSCALE      (20 bytes, a Linux SYN)
 * Returns true if it handled the options; anything else goes to the general
 * parser below. tests/prog_test_run.rs checks both paths give the same event.
 */
static __always_inline bool walk_tcp_options_fast(__u8 *o, __u32 opt_len, void *data_end,
						   struct packet_event *ev)
{
	if (opt_len == 12) {
		if ((void *)(o + 12) > data_end)
			return false;
		if (o[0] != TCPOPT_NOP || o[1] != TCPOPT_NOP || o[2] != TCPOPT_TIMESTAMP ||
		    o[3] != TCPOLEN_TIMESTAMP)
			return false;
		ev->ts_val = bpf_ntohl(*(__u32 *)(o + 4));
		ev->ts_ecr = bpf_ntohl(*(__u32 *)(o + 8));
		ev->opt_present |= OPT_TS;
		return true;
	}
	if (opt_len == 20) {
		if ((void *)(o + 20) > data_end)
			return false;
		if (o[0] != TCPOPT_MSS || o[1] != TCPOLEN_MSS || o[4] != TCPOPT_SACK_PERM ||
		    o[5] != TCPOLEN_SACK_PERM || o[6] != TCPOPT_TIMESTAMP ||
		    o[7] != TCPOLEN_TIMESTAMP || o[16] != TCPOPT_NOP || o[17] != TCPOPT_WSCALE ||
		    o[18] != TCPOLEN_WSCALE)
			return false;
		ev->mss = bpf_ntohs(*(__u16 *)(o + 2));
		ev->ts_val = bpf_ntohl(*(__u32 *)(o + 8));
		ev->ts_ecr = bpf_ntohl(*(__u32 *)(o + 12));
		ev->wscale = o[19];
		ev->opt_present |= OPT_MSS | OPT_SACK_PERM | OPT_TS | OPT_WSCALE;
		return true;
	}
	return false;
}

/* Fixed TCP header and options: PARSE_OK (ev->malformed may be set for
 * option or length errors found after the ports) or PARSE_MALFORMED. */
static __always_inline int parse_tcp(void *ctx, __u8 hook, void *data,
				     struct hdr_cursor *nh, void *data_end,
				     struct packet_event *ev, struct l3_info *l3, bool lean)
{
	struct tcphdr *th = nh->pos;
	if ((void *)(th + 1) > data_end) {
		ev->malformed = MALFORMED_TCP_TRUNCATED;
		return PARSE_MALFORMED;
	}
	ev->sport = bpf_ntohs(th->source);
	ev->dport = bpf_ntohs(th->dest);
	ev->seq = bpf_ntohl(th->seq);
	ev->ack = bpf_ntohl(th->ack_seq);
	__u8 *b = (__u8 *)th;
	ev->flags_raw = ((__u16)(b[12] & 0x0f) << 8) | b[13];
	ev->window = bpf_ntohs(th->window);
	ev->checksum = bpf_ntohs(th->check);
	ev->urgent_ptr = bpf_ntohs(th->urg_ptr);

	__u32 hlen = th->doff * 4;
	ev->hdr_len = hlen;
	if (hlen < TCP_MIN_HLEN) {
		ev->malformed = MALFORMED_TCP_BAD_DOFF;
		return PARSE_OK;
	}
	if (hlen > l3->ip_payload_len) {
		ev->malformed = MALFORMED_TCP_BAD_IP_LEN;
		return PARSE_OK;
	}
	ev->payload_len = l3->ip_payload_len - hlen;
	if (nh->pos + hlen > data_end) {
		ev->malformed = MALFORMED_TCP_HDR_TRUNCATED;
		return PARSE_OK;
	}
	/* lean (guard): options matter only to the SYN-with-data detector. */
	if (lean && !((ev->flags_raw & TCPF_SYN) && ev->payload_len)) {
		nh->pos += hlen;
		return PARSE_OK;
	}
	if (hlen > TCP_MIN_HLEN && walk_tcp_options_fast((__u8 *)(th + 1), hlen - TCP_MIN_HLEN,
							 data_end, ev)) {
		/* The common Linux layouts, parsed in place. */
	} else if (hlen > TCP_MIN_HLEN) {
		struct tcp_opt_buf opts;
		__u32 opt_len = hlen - TCP_MIN_HLEN;
		__u32 opt_off = (void *)(th + 1) - data;
		long err;

		if (opt_len > TCP_MAX_OPT_LEN)
			opt_len = TCP_MAX_OPT_LEN; /* doff is 4 bits: cannot happen */
		if (hook == TCPSCOPE_HOOK_XDP)
			err = bpf_xdp_load_bytes(ctx, opt_off, opts.b, opt_len);
		else
			err = bpf_skb_load_bytes(ctx, opt_off, opts.b, opt_len);
		if (err)
			ev->malformed = MALFORMED_TCP_HDR_TRUNCATED;
		else {
			opts.len = opt_len;
			ev->malformed = walk_tcp_options(&opts, ev);
		}
	}
	nh->pos += hlen;
	return PARSE_OK;
}

#endif /* TCPSCOPE_PARSE_KERN_H */
