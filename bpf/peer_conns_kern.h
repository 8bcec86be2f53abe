/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Established incoming connections per peer address and network namespace
 * (struct peer_key): the lifecycle programs count them (the guard's
 * connection limit), the ingress programs read them (the guard's
 * --enforce). One map in both objects: the guard has the lifecycle object
 * reuse the ingress object's before load, and reuse requires the same
 * definition, hence this one header for both.
 */
#ifndef TCPSCOPE_PEER_CONNS_KERN_H
#define TCPSCOPE_PEER_CONNS_KERN_H

#include "common_kern_user.h"

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct peer_key);
	__type(value, __u32);
} peer_conns SEC(".maps");

#endif /* TCPSCOPE_PEER_CONNS_KERN_H */
