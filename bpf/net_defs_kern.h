/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Protocol numbers the programs need, in one place: <linux/if_ether.h>,
 * <linux/in.h> and friends cannot be included next to vmlinux.h, which has
 * no #defines.
 */
#ifndef TCPSCOPE_NET_DEFS_KERN_H
#define TCPSCOPE_NET_DEFS_KERN_H

#define ETH_HLEN 14
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define ETH_P_8021Q 0x8100
#define ETH_P_8021AD 0x88A8
#define VLAN_HLEN 4
#define VLAN_VID_MASK 0x0fff
#define IPPROTO_TCP_NUM 6
#define IPV6_HOPOPTS 0
#define IPV6_ROUTING 43
#define IPV6_FRAGMENT 44
#define IPV6_DSTOPTS 60
#define IPV4_FRAG_OFFSET_MASK 0x1fff
#define IPV4_FLAG_MF 0x2000
#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM_NUM 1

#endif /* TCPSCOPE_NET_DEFS_KERN_H */
