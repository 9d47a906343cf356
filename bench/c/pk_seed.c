// SPDX-License-Identifier: GPL-2.0
// Port knocking the way the OpenState-on-eBPF seed does it: three hash
// map operations per packet.
//   1. state table lookup, keyed by (ethertype, ip.src, ip.dst);
//   2. XFSM table lookup, keyed by (state, l4 protocol, 0, dport), filled
//      by user space;
//   3. bpf_map_update_elem of the state table with the next state.
// A missing state reads as DEFAULT. The XFSM table cannot hold wildcards,
// so its misses are the two wildcard rows of examples/portknock.fsm,
// written out here: OPEN stays OPEN, every other state goes to DEFAULT;
// both drop. Like the seed, there is no idle timeout.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define STATE_DEFAULT 0
#define STATE_OPEN 4

#define ACTION_DROP 0
#define ACTION_PASS 1

struct state_key {
	__u16 ether_type;
	__u32 ip_src;
	__u32 ip_dst;
};

struct state_val {
	__s32 state;
};

struct xfsm_key {
	__s32 state;
	__u8 l4_proto;
	__u16 src_port;
	__u16 dst_port;
};

struct xfsm_val {
	__s32 action;
	__s32 next_state;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct state_key);
	__type(value, struct state_val);
} state_table SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, struct xfsm_key);
	__type(value, struct xfsm_val);
} xfsm_table SEC(".maps");

SEC("xdp")
int pk_seed(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	void *l4;
	__u16 dport = 0;

	if ((void *)(eth + 1) > data_end)
		return XDP_PASS;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end || ip->ihl < 5)
		return XDP_PASS;
	l4 = (void *)ip + ip->ihl * 4;
	if (ip->protocol == IPPROTO_UDP) {
		struct udphdr *udp = l4;
		if ((void *)(udp + 1) <= data_end)
			dport = bpf_ntohs(udp->dest);
	} else if (ip->protocol == IPPROTO_TCP) {
		struct tcphdr *tcp = l4;
		if ((void *)(tcp + 1) <= data_end)
			dport = bpf_ntohs(tcp->dest);
	}

	struct state_key state_idx;
	__builtin_memset(&state_idx, 0, sizeof(state_idx));
	state_idx.ether_type = ETH_P_IP;
	state_idx.ip_src = bpf_ntohl(ip->saddr);
	state_idx.ip_dst = bpf_ntohl(ip->daddr);

	__s32 current_state = STATE_DEFAULT;
	struct state_val *state_val = bpf_map_lookup_elem(&state_table, &state_idx);
	if (state_val)
		current_state = state_val->state;

	struct xfsm_key xfsm_idx;
	__builtin_memset(&xfsm_idx, 0, sizeof(xfsm_idx));
	xfsm_idx.state = current_state;
	xfsm_idx.l4_proto = ip->protocol;
	xfsm_idx.src_port = 0;
	xfsm_idx.dst_port = dport;

	__s32 action = ACTION_DROP;
	struct state_val new_state = {
		.state = current_state == STATE_OPEN ? STATE_OPEN : STATE_DEFAULT,
	};
	struct xfsm_val *xfsm_val = bpf_map_lookup_elem(&xfsm_table, &xfsm_idx);
	if (xfsm_val) {
		action = xfsm_val->action;
		new_state.state = xfsm_val->next_state;
	}
	bpf_map_update_elem(&state_table, &state_idx, &new_state, BPF_ANY);

	return action == ACTION_PASS ? XDP_PASS : XDP_DROP;
}

char LICENSE[] SEC("license") = "GPL";
