/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Guard rules on L7 names (common_kern_user.h says what they are). Included
 * by ingress.bpf.c after l7_kern.h (struct l7_pkt, l7_listening) and after
 * its rule helpers (rule_live).
 *
 * The flow's bytes are held in order: a segment past a hole is dropped
 * while the first message is incomplete (the client sends it again once
 * the hole is filled), and a segment over held bytes must carry the same
 * bytes. So the guard reads exactly the stream the server's TCP will
 * deliver, whatever the segments' boundaries, order, copies or checksums.
 *
 * Everything lives in map memory: the ingress program leaves the global
 * functions below 16 bytes of stack.
 */
#ifndef TCPSCOPE_L7_GUARD_KERN_H
#define TCPSCOPE_L7_GUARD_KERN_H

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536);
	__type(key, struct l7_rule_key);
	__type(value, struct policy_value);
} l7_rules SEC(".maps");

/* Allocated per flow (NO_PREALLOC): a guard with L7 rules and few flows
 * holds little. Full, new SYNs are dropped (as conntrack does): a flow not
 * held would be a flow no rule sees. User space sweeps idle flows. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, L7_GUARD_MAX_FLOWS);
	__type(key, struct l7_flow_key);
	__type(value, struct l7_guard_flow);
} l7_guard_flows SEC(".maps");

struct l7g_scratch {
	struct l7_pkt p;
	struct l7_flow_key k;
	struct bpf_sock_tuple t;
	struct l7_rule_key rk;
	__u32 off;      /* the frame offset of the bytes still to take */
	__u32 len;      /* and how many */
	__u32 at;       /* their stream offset */
	__u32 name_at;  /* a name found in the held bytes */
	__u32 name_len;
	__u32 host2_at; /* a second Host header's value */
	__u32 host2_len;
	__u32 h1;       /* the first and last Host values' starts */
	__u32 h2;
	__u32 head_end; /* an HTTP request head's end */
	__u32 differs;  /* a segment's bytes differ from the held ones */
	__u32 cmp_at;   /* where the compared bytes are held */
	__u8 seg[L7_GUARD_BUF]; /* a segment's bytes over held ones */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct l7g_scratch);
} l7g_scratch SEC(".maps");

/* The scratch slot, and the flow of its key: what each of the global
 * functions below works on. NULL when either is missing. */
#define L7G_HELD(s, fl)                                                                \
	struct l7g_scratch *s = bpf_map_lookup_elem(&l7g_scratch, &l7_zero);           \
	struct l7_guard_flow *fl = s ? bpf_map_lookup_elem(&l7_guard_flows, &s->k) : 0; \
	if (!s || !fl)

/* A new flow's value, copied from read-only data (4 KiB: no stack holds it). */
static const struct l7_guard_flow l7g_zero_flow = {};

#define L7G_MASK (L7_GUARD_BUF - 1)
#define L7G_B(fl, i) ((fl)->buf[(i) & L7G_MASK])

/* What reading the held bytes decided. */
enum l7g_verdict {
	L7G_MORE = 0, /* the first message is not complete */
	L7G_PASS,
	L7G_MATCH,    /* a rule matched: the flow is blocked */
	L7G_UNDECIDED,
};

/* l7g_packet: bytes were added to the held ones; read them. */
#define L7G_READ 0x100
/* l7g_packet: a packet of a passed flow (that passes): see l7g_settle. */
#define L7G_SETTLE 0x200

static __always_inline __u8 l7g_lower(__u8 c)
{
	return (c >= 'A' && c <= 'Z') ? c + 32 : c;
}

/* An alert for a flow: its client, the kind, and the name (or method). */
static __always_inline void l7g_alert(const struct l7g_scratch *s, const struct l7_guard_flow *fl, __u8 kind,
				      __u32 value, bool with_name)
{
	struct alert_event *a = bpf_ringbuf_reserve(&alerts, sizeof(*a), 0);
	if (!a)
		return;
	__builtin_memset(a, 0, sizeof(*a));
	a->ts_ns = bpf_ktime_get_ns();
	__builtin_memcpy(a->src, s->p.src, 16);
	a->value = value;
	a->dport = s->p.dport;
	a->sport = s->p.sport;
	a->flags_raw = s->p.flags_raw;
	a->kind = kind;
	a->ip_version = s->p.ip_version;
	if (with_name) {
		__u32 n = s->name_len;
		if (n > ALERT_NAME_MAX)
			n = ALERT_NAME_MAX;
		a->name_len = n;
		for (int i = 0; i < ALERT_NAME_MAX; i++) {
			if (i >= n)
				break;
			a->name[i] = l7g_lower(L7G_B(fl, s->name_at + i));
		}
	}
	bpf_ringbuf_submit(a, 0);
}

/*
 * Whether a rule of `kind` matches the name at [name_at, name_at +
 * name_len) of the held bytes: one longest-prefix lookup of the name,
 * reversed and in lower case (a trailing dot dropped). A name longer than
 * L7_GUARD_NAME_MAX keeps its last bytes, which wildcard rules still see.
 */
__noinline int l7g_match(__u32 kind)
{
	L7G_HELD(s, fl)
		return 0;
	__u32 n = s->name_len;
	if (n && L7G_B(fl, s->name_at + n - 1) == '.')
		n--;
	if (!n)
		return false;
	struct l7_rule_key *rk = &s->rk;
	__builtin_memset(rk, 0, sizeof(*rk));
	rk->kind = kind;
	__u32 end = s->name_at + n;
	for (int i = 0; i < L7_GUARD_NAME_MAX; i++) {
		if (i >= n)
			break;
		rk->name[i] = l7g_lower(L7G_B(fl, end - 1 - i));
	}
	/* rk->name[n] stays 0: the end mark that exact rules include; a name
	 * cut to its last bytes gets none, so only wildcard rules match it. */
	if (n > L7_GUARD_NAME_MAX)
		rk->name[L7_GUARD_NAME_MAX] = 0xff;
	rk->prefixlen = 8 * (1 + L7_GUARD_NAME_MAX + 1);
	return rule_live(bpf_map_lookup_elem(&l7_rules, rk));
}

/* Verified on its own: the lookup's walk once, not once per caller's path. */
static __always_inline bool l7g_lookup(struct l7g_scratch *s, const struct l7_guard_flow *fl, __u8 kind)
{
	return l7g_match(kind);
}

/* Big-endian reads of held bytes. */
static __always_inline __u32 l7g_u16(const struct l7_guard_flow *fl, __u32 i)
{
	return ((__u32)L7G_B(fl, i) << 8) | L7G_B(fl, i + 1);
}

/* The server_name extension's offset among the extensions at [name_at,
 * name_len) of the held bytes, or 0. Each extension takes at least 4
 * bytes: L7_GUARD_BUF / 4 steps walk any hello the buffer holds. */
__noinline int l7g_find_sni(void)
{
	L7G_HELD(s, fl)
		return 0;
	__u32 p = s->name_at, end = s->name_len;
	for (int i = 0; i < L7_GUARD_BUF / 4; i++) {
		if (p + 4 > end)
			return 0;
		if (l7g_u16(fl, p) == 0)
			return p;
		p += 4 + l7g_u16(fl, p + 2);
	}
	return 0;
}

/* The TLS ClientHello held in [0, next): its server_name against the SNI
 * rules. Record: type(1) version(2) length(2); handshake: type(1)
 * length(3) version(2) random(32) session_id(1+n) cipher_suites(2+n)
 * compression(1+n) extensions(2+n). A hello the server cannot parse
 * either (a length past its end) passes: the server refuses it itself. */
static __always_inline int l7g_tls(struct l7g_scratch *s, const struct l7_guard_flow *fl, __u32 next,
				   const struct policy_used *used)
{
	if (!used->l7[L7_RULE_SNI])
		return L7G_PASS;
	if (next < 9)
		return L7G_MORE;
	if (L7G_B(fl, 1) != 3 || L7G_B(fl, 5) != 1)
		return L7G_PASS; /* not TLS, or not a ClientHello: no name to show */
	__u32 rec_len = l7g_u16(fl, 3);
	__u32 hs_len = ((__u32)L7G_B(fl, 6) << 16) | l7g_u16(fl, 7);
	if (hs_len + 4 > rec_len)
		return L7G_UNDECIDED | (L7_UNDECIDED_TLS_FRAGMENTED << 8);
	__u32 end = 9 + hs_len;
	if (end > L7_GUARD_BUF)
		return L7G_UNDECIDED | (L7_UNDECIDED_TOO_LARGE << 8);
	if (next < end)
		return L7G_MORE;
	__u32 p = 9 + 2 + 32;
	if (p + 1 > end)
		return L7G_PASS;
	p += 1 + L7G_B(fl, p);
	if (p + 2 > end)
		return L7G_PASS;
	p += 2 + l7g_u16(fl, p);
	if (p + 1 > end)
		return L7G_PASS;
	p += 1 + L7G_B(fl, p);
	if (p + 2 > end)
		return L7G_PASS;
	__u32 ext_end = p + 2 + l7g_u16(fl, p);
	if (ext_end > end)
		ext_end = end;
	p += 2;
	s->name_at = p;
	s->name_len = ext_end;
	__u32 sni = l7g_find_sni();
	if (!sni)
		return L7G_PASS; /* no server_name */
	/* list length(2), name type(1), name length(2), name */
	if (sni + 9 > ext_end || L7G_B(fl, sni + 6) != 0)
		return L7G_PASS;
	__u32 nlen = l7g_u16(fl, sni + 7);
	if (sni + 9 + nlen > ext_end)
		return L7G_PASS;
	s->name_at = sni + 9;
	s->name_len = nlen;
	return l7g_lookup(s, fl, L7_RULE_SNI) ? L7G_MATCH | (L7_RULE_SNI << 8) : L7G_PASS;
}

/* Whether held bytes at i spell "host:" (any case) */
static __always_inline bool l7g_is_host(const struct l7_guard_flow *fl, __u32 i)
{
	return l7g_lower(L7G_B(fl, i)) == 'h' && l7g_lower(L7G_B(fl, i + 1)) == 'o' &&
	       l7g_lower(L7G_B(fl, i + 2)) == 's' && l7g_lower(L7G_B(fl, i + 3)) == 't' && L7G_B(fl, i + 4) == ':';
}

/* The host at v in the held bytes, in name_at and name_len: past a
 * header's spaces and tabs, up to a port's colon, a path, a space or the
 * line's end before `limit` (an IPv6 literal keeps its brackets). A
 * function of its own: its result is one unknown to its callers, not one
 * path per length. */
__noinline int l7g_host(__u32 v, __u32 limit)
{
	L7G_HELD(s, fl)
		return 0;
	for (int j = 0; j < 8; j++) {
		__u8 w = L7G_B(fl, v);
		if ((w != ' ' && w != '\t') || v + 1 >= limit)
			break;
		v++;
	}
	s->name_at = v;
	s->name_len = 0;
	bool bracket = L7G_B(fl, v) == '[';
	for (int j = 0; j < L7_GUARD_NAME_MAX + 64; j++) {
		if (v + j >= limit)
			break;
		__u8 c = L7G_B(fl, v + j);
		if (c == '\r' || c == '\n' || c == ' ' || c == '\t' || c == '/' || c == '?' || c == '#')
			break;
		if (c == ']' && bracket) {
			s->name_len = j + 1;
			return 0;
		}
		if (c == ':' && !bracket)
			break;
		s->name_len = j + 1;
	}
	return 0;
}

/* bpf_loop's context: the flow. (A bounded loop over 4,096 bytes left
 * more branches pending than the verifier keeps, 8,192.) */
struct l7g_loop {
	struct l7_guard_flow *fl;
};

/* One byte of the head walk: at a line's start, the empty line ends it
 * (returned in head_end), and a Host header's value start is kept. */
static long l7g_head_step(__u64 i, void *ctx)
{
	struct l7g_scratch *s = bpf_map_lookup_elem(&l7g_scratch, &l7_zero);
	struct l7_guard_flow *fl = ((struct l7g_loop *)ctx)->fl;
	if (!s || !fl)
		return 1;
	if (L7G_B(fl, i) != '\n')
		return 0;
	__u32 next = s->name_at;
	__u8 c = L7G_B(fl, i + 1);
	if (c == '\n' || (c == '\r' && i + 2 < next && L7G_B(fl, i + 2) == '\n')) {
		s->head_end = i + 1;
		return 1;
	}
	if (i + 6 < next && l7g_is_host(fl, i + 1)) {
		if (!s->h1)
			s->h1 = i + 6;
		else
			s->h2 = i + 6;
	}
	return 0;
}

/* The end of the request head held in [0, name_at) (the empty line's
 * start), or 0; and the first and last Host values' starts in h1, h2. */
static __always_inline __u32 l7g_scan_head(struct l7g_scratch *s, struct l7_guard_flow *fl, __u32 next)
{
	struct l7g_loop lc = { .fl = fl };
	s->name_at = next;
	s->head_end = 0;
	s->h1 = 0;
	s->h2 = 0;
	if (next < 2)
		return 0;
	bpf_loop(next - 1, l7g_head_step, &lc, 0);
	return s->head_end;
}

/* An HTTP/1 request head held in [0, next): its method against the method
 * rules, and its Host headers (each of them: servers differ on which they
 * take) and an absolute-form target's host against the host rules. */
static __always_inline int l7g_http(struct l7g_scratch *s, const struct l7_guard_flow *fl, __u32 next,
				    const struct policy_used *used)
{
	/* The method: 1 to 16 upper-case letters (or '-', '_') and a space. */
	__u32 m = 0;
	for (int i = 0; i < 17; i++) {
		if (i >= next)
			return L7G_MORE;
		__u8 c = L7G_B(fl, i);
		if (c == ' ') {
			m = i;
			break;
		}
		if (!((c >= 'A' && c <= 'Z') || c == '-' || c == '_'))
			return L7G_PASS; /* not HTTP/1 */
	}
	if (!m)
		return L7G_PASS;
	bool hosts = used->l7[L7_RULE_HOST];
	if (!hosts && !used->l7[L7_RULE_METHOD])
		return L7G_PASS;
	/* h2c with prior knowledge: its host is in HPACK, not read here. */
	if (m == 3 && L7G_B(fl, 0) == 'P' && L7G_B(fl, 1) == 'R' && L7G_B(fl, 2) == 'I' && hosts)
		return L7G_UNDECIDED | (L7_UNDECIDED_H2C << 8);

	__u32 head_end = l7g_scan_head(s, (struct l7_guard_flow *)fl, next);
	__u32 h1 = s->h1, h2 = s->h2;
	if (!head_end)
		return next >= L7_GUARD_BUF ? L7G_UNDECIDED | (L7_UNDECIDED_TOO_LARGE << 8) : L7G_MORE;
	if (used->l7[L7_RULE_METHOD]) {
		s->name_at = 0;
		s->name_len = m;
		if (l7g_lookup(s, fl, L7_RULE_METHOD))
			return L7G_MATCH | (L7_RULE_METHOD << 8);
	}
	if (!hosts)
		return L7G_PASS;
	if (h1) {
		l7g_host(h1, head_end);
		if (l7g_lookup(s, fl, L7_RULE_HOST))
			return L7G_MATCH | (L7_RULE_HOST << 8);
	}
	if (h2) {
		l7g_host(h2, head_end);
		if (l7g_lookup(s, fl, L7_RULE_HOST))
			return L7G_MATCH | (L7_RULE_HOST << 8);
	}
	/* An absolute-form target ("GET http://host/ HTTP/1.1") names the
	 * host a server uses over any Host header (RFC 9112, 3.2.2). */
	__u32 t = m + 1;
	if (l7g_lower(L7G_B(fl, t)) == 'h' && l7g_lower(L7G_B(fl, t + 1)) == 't' &&
	    l7g_lower(L7G_B(fl, t + 2)) == 't' && l7g_lower(L7G_B(fl, t + 3)) == 'p') {
		__u32 v = t + 4;
		if (l7g_lower(L7G_B(fl, v)) == 's')
			v++;
		if (L7G_B(fl, v) == ':' && L7G_B(fl, v + 1) == '/' && L7G_B(fl, v + 2) == '/') {
			l7g_host(v + 3, head_end);
			if (l7g_lookup(s, fl, L7_RULE_HOST))
				return L7G_MATCH | (L7_RULE_HOST << 8);
		}
	}
	return L7G_PASS;
}

/* Reads the held bytes: by content (a TLS handshake record, or an HTTP/1
 * request line), whatever the port. Anything else passes. */
static __always_inline int l7g_decide(struct l7g_scratch *s, const struct l7_guard_flow *fl, __u32 next,
				      const struct policy_used *used)
{
	if (!next)
		return L7G_MORE;
	if (L7G_B(fl, 0) == 0x16)
		return l7g_tls(s, fl, next, used);
	return l7g_http(s, fl, next, used);
}

/* The held bytes read, as a function of its own (verified once): the flow
 * is the scratch slot's key's. */
__noinline int l7g_read_held(void)
{
	struct l7g_scratch *s = bpf_map_lookup_elem(&l7g_scratch, &l7_zero);
	struct policy_used *used = bpf_map_lookup_elem(&policy_used, &l7_zero);
	if (!s || !used)
		return L7G_PASS;
	struct l7_guard_flow *fl = bpf_map_lookup_elem(&l7_guard_flows, &s->k);
	if (!fl)
		return L7G_PASS;
	return l7g_decide(s, fl, fl->next, used);
}

/* Copies frame bytes [off, off + n) into the held bytes at `at`, in
 * power-of-two pieces the verifier can bound (n <= L7_GUARD_BUF - at). */
static __always_inline long l7g_take(void *ctx, const __u8 hook, struct l7_guard_flow *fl, __u32 off, __u32 at,
				     __u32 n)
{
	long err = 0;
#pragma unroll
	for (int b = 12; b >= 0; b--) {
		const __u32 piece = 1u << b;
		if (!(n & piece))
			continue;
		__u64 dst = at;
		asm volatile("" : "+r"(dst));
		if (dst > L7_GUARD_BUF - piece)
			return -1;
		if (hook == TCPSCOPE_HOOK_XDP)
			err = bpf_xdp_load_bytes(ctx, off, &fl->buf[dst], piece);
		else
			err = bpf_skb_load_bytes(ctx, off, &fl->buf[dst], piece);
		if (err)
			return err;
		at += piece;
		off += piece;
	}
	return 0;
}

/* One byte of a comparison of seg[] with the held bytes at cmp_at. */
static long l7g_same_step(__u64 i, void *ctx)
{
	struct l7g_scratch *s = bpf_map_lookup_elem(&l7g_scratch, &l7_zero);
	struct l7_guard_flow *fl = ((struct l7g_loop *)ctx)->fl;
	if (!s || !fl)
		return 1;
	if (s->seg[i & L7G_MASK] == L7G_B(fl, s->cmp_at + i))
		return 0;
	s->differs = 1;
	return 1;
}

/* Whether frame bytes [off, off + n) equal the held bytes at `at`. */
static __always_inline bool l7g_same(void *ctx, const __u8 hook, struct l7g_scratch *s, struct l7_guard_flow *fl,
				     __u32 off, __u32 at, __u32 n)
{
	__u64 len = n;
	asm volatile("" : "+r"(len));
	if (len == 0 || len > L7_GUARD_BUF)
		return len == 0;
	long err;
	if (hook == TCPSCOPE_HOOK_XDP)
		err = bpf_xdp_load_bytes(ctx, off, s->seg, len);
	else
		err = bpf_skb_load_bytes(ctx, off, s->seg, len);
	if (err)
		return true; /* not readable: the kernel cannot read it either */
	struct l7g_loop lc = { .fl = fl };
	s->cmp_at = at;
	s->differs = 0;
	bpf_loop(len, l7g_same_step, &lc, 0);
	return !s->differs;
}

/* Blocks the flow for `why`; returns the drop reason. */
static __always_inline int l7g_block(struct l7_guard_flow *fl, __u8 why)
{
	fl->state = L7_GUARD_BLOCKED;
	fl->why = why;
	fl->seen_ns = bpf_ktime_get_ns();
	return why;
}

/* One TCP packet of a guard with L7 rules (in the scratch slot's p).
 * Returns the drop reason, or GUARD_DROP_NONE. */
static __always_inline int l7g_packet(void *ctx, const __u8 hook)
{
	struct l7g_scratch *s = bpf_map_lookup_elem(&l7g_scratch, &l7_zero);
	struct policy_used *used = bpf_map_lookup_elem(&policy_used, &l7_zero);
	if (!s || !used)
		return GUARD_DROP_NONE; /* cannot happen: 1-slot arrays */
	struct l7_pkt *p = &s->p;
	struct l7_flow_key *k = &s->k;
	l7_key_of(k, p);
	__u16 f = p->flags_raw;
	struct l7_guard_flow *fl = bpf_map_lookup_elem(&l7_guard_flows, k);

	if ((f & (TCPF_SYN | TCPF_ACK)) == TCPF_SYN) {
		if (fl) {
			if (fl->state == L7_GUARD_BLOCKED)
				return fl->why;
			/* A SYN over a flow with bytes held and not closed must
			 * not move its stream offsets (another ISN would let the
			 * held bytes say nothing of what the server reads). */
			if (fl->next && !fl->closing)
				return GUARD_DROP_NONE;
		}
		if (!l7_listening(ctx, &s->t, p))
			return GUARD_DROP_NONE;
		if (bpf_map_update_elem(&l7_guard_flows, k, &l7g_zero_flow, BPF_ANY))
			return GUARD_DROP_L7_TABLE_FULL;
		fl = bpf_map_lookup_elem(&l7_guard_flows, k);
		if (!fl)
			return GUARD_DROP_NONE;
		fl->isn = p->seq;
		fl->seen_ns = bpf_ktime_get_ns();
		return GUARD_DROP_NONE;
	}
	if (!fl)
		return GUARD_DROP_NONE;
	if (fl->state == L7_GUARD_BLOCKED) {
		fl->seen_ns = bpf_ktime_get_ns();
		return fl->why;
	}
	if (f & (TCPF_FIN | TCPF_RST))
		fl->closing = 1;
	if (p->malformed || p->payload_off >= p->frame_len || !p->payload_len)
		return fl->state == L7_GUARD_PASSED ? L7G_SETTLE : GUARD_DROP_NONE;
	__u32 len = p->frame_len - p->payload_off;
	if (len > p->payload_len)
		len = p->payload_len;
	__u32 off = p->payload_off;
	__u32 at = p->seq - fl->isn - 1;
	if ((__s32)at < 0) {
		/* Starts before the stream: only its bytes from offset 0 on
		 * can reach the server. */
		__u32 skip = -at;
		if (skip >= len)
			return GUARD_DROP_NONE;
		off += skip;
		len -= skip;
		at = 0;
	}
	__u32 next = fl->next;
	if (at > next)
		return fl->state == L7_GUARD_READING ? GUARD_DROP_L7_OUT_OF_ORDER : L7G_SETTLE;
	if (at < next) {
		__u32 n = next - at;
		if (n > len)
			n = len;
		if (!l7g_same(ctx, hook, s, fl, off, at, n)) {
			s->name_len = 0;
			l7g_alert(s, fl, ALERT_L7_CONFLICT, at, false);
			return l7g_block(fl, GUARD_DROP_L7_CONFLICT);
		}
		at += n;
		off += n;
		len -= n;
	}
	if (!len || fl->state != L7_GUARD_READING)
		return fl->state == L7_GUARD_PASSED ? L7G_SETTLE : GUARD_DROP_NONE;
	__u32 room = L7_GUARD_BUF - next;
	__u32 n = len < room ? len : room;
	if (n) {
		if (l7g_take(ctx, hook, fl, off, next, n))
			return GUARD_DROP_NONE; /* unreadable: the kernel cannot read it either */
		next += n;
		fl->next = next;
		fl->seen_ns = bpf_ktime_get_ns(); /* the timeout counts from the last bytes */
	}
	return L7G_READ;
}

/* What reading the held bytes decided (l7g_read_held's verdict), applied
 * to the flow of the scratch slot's key. Returns the drop reason, or
 * GUARD_DROP_NONE. */
__noinline int l7g_apply(int v)
{
	L7G_HELD(s, fl)
		return GUARD_DROP_NONE;
	__u32 detail = (__u32)v >> 8;
	switch (v & 0xff) {
	case L7G_MORE:
		if (fl->next < L7_GUARD_BUF)
			return GUARD_DROP_NONE;
		detail = L7_UNDECIDED_TOO_LARGE;
		/* fallthrough */
	case L7G_UNDECIDED:
		fl->undecided = detail;
		if (dcfg.l7_undecided_pass) {
			fl->state = L7_GUARD_PASSED;
			return GUARD_DROP_NONE;
		}
		l7g_alert(s, fl, ALERT_L7_UNDECIDED, detail, false);
		return l7g_block(fl, GUARD_DROP_L7_UNDECIDED);
	case L7G_MATCH:
		l7g_alert(s, fl, ALERT_L7_BLOCKED, detail, true);
		return l7g_block(fl, GUARD_DROP_L7_RULE);
	default:
		fl->state = L7_GUARD_PASSED;
		fl->seen_ns = bpf_ktime_get_ns();
		return GUARD_DROP_NONE;
	}
}

/*
 * A passed flow is forgotten once the server's TCP has taken every byte
 * held (its socket's rcv_nxt is past them): a copy sent again can no
 * longer reach the server, so there is nothing left to compare. The
 * socket's word, not the client's (whose ACKs and FINs an attacker
 * writes): a first copy the server dropped (a bad checksum, an old
 * timestamp) leaves rcv_nxt where it was, and the flow held. So the
 * table holds the flows whose first message is in flight, not every
 * open connection. The flow is the scratch slot's.
 */
static __always_inline void l7g_settle(void *ctx)
{
	L7G_HELD(s, fl)
		return;
	struct bpf_sock *sk = l7_sock(ctx, &s->t, &s->p);
	if (!sk)
		return;
	/* A connection's own socket: a listener's or a request's rcv_nxt says
	 * nothing of this flow (10: LISTEN, 12: NEW_SYN_RECV, 3: SYN_RECV). */
	__u32 state = sk->state;
	struct tcp_sock *tp = state == 10 || state == 12 || state == 3 ? 0 : bpf_skc_to_tcp_sock(sk);
	bool taken = false;
	if (tp) {
		__u32 rcv_nxt = tp->rcv_nxt;
		taken = (__s32)(rcv_nxt - (fl->isn + 1 + fl->next)) >= 0;
	}
	bpf_sk_release(sk);
	if (taken)
		bpf_map_delete_elem(&l7_guard_flows, &s->k);
}

__noinline int l7g_settle_xdp(struct xdp_md *ctx)
{
	if (ctx)
		l7g_settle(ctx);
	return 0;
}

__noinline int l7g_settle_tc(struct __sk_buff *ctx)
{
	if (ctx)
		l7g_settle(ctx);
	return 0;
}

__noinline int l7g_packet_xdp(struct xdp_md *ctx)
{
	if (!ctx)
		return 0;
	return l7g_packet(ctx, TCPSCOPE_HOOK_XDP);
}

__noinline int l7g_packet_tc(struct __sk_buff *ctx)
{
	if (!ctx)
		return 0;
	return l7g_packet(ctx, TCPSCOPE_HOOK_TC);
}

/* Called by the guard for each TCP packet no list decided, while L7 rules
 * exist. Returns the drop reason, or GUARD_DROP_NONE. A bare ACK of a flow
 * not blocked tells nothing, but a blocked flow's ACKs drop too: the
 * lookup is the price of a guard with L7 rules. */
static __always_inline int l7g_hand_over(void *ctx, const struct packet_event *ev, const __u8 hook)
{
	struct l7g_scratch *s = bpf_map_lookup_elem(&l7g_scratch, &l7_zero);
	if (!s)
		return GUARD_DROP_NONE; /* cannot happen: a 1-slot array */
	l7_pkt_of(&s->p, ev, ev->payload_off, ev->frame_len, 0, hook);
	int r = hook == TCPSCOPE_HOOK_XDP ? l7g_packet_xdp(ctx) : l7g_packet_tc(ctx);
	if (r == L7G_SETTLE) {
		if (hook == TCPSCOPE_HOOK_XDP)
			l7g_settle_xdp(ctx);
		else
			l7g_settle_tc(ctx);
		return GUARD_DROP_NONE;
	}
	if (r != L7G_READ)
		return r;
	/* Called from here, not from l7g_packet: each function's stack adds
	 * to the ingress program's, and only 56 bytes are left. */
	return l7g_apply(l7g_read_held());
}

#endif /* TCPSCOPE_L7_GUARD_KERN_H */
