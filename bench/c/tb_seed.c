// SPDX-License-Identifier: GPL-2.0
// The two-colour token bucket the way the OpenState-on-eBPF seed does it
// (seeds/token-bucket-poc.txt): per packet, bpf_ktime_get_ns, a state
// table lookup (state and the window registers tmin, tmax), the two
// conditions now >= tmin and now <= tmax evaluated in code, an XFSM table
// lookup keyed by (state, cond1, cond2) that user space fills, the update
// function it names applied, and bpf_map_update_elem of the state table.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define B 5
#define Q 1000000000LL

#define ACTION_DROP 0
#define ACTION_PASS 1

#define UPDATE_NONE 0
#define UPDATE_OPEN 1	/* open a full window at this packet */
#define UPDATE_SHIFT 2	/* take a token: shift the window by Q */

struct state_key {
	__u16 ether_type;
	__u32 ip_src;
	__u32 ip_dst;
};

struct state_val {
	__s32 state;
	__s64 tmin;
	__s64 tmax;
};

struct xfsm_key {
	__s32 state;
	__s32 cond1;
	__s32 cond2;
};

struct xfsm_val {
	__s32 action;
	__s32 next_state;
	__s32 update;
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
int tb_seed(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;

	if ((void *)(eth + 1) > data_end)
		return XDP_PASS;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return XDP_PASS;

	__s64 tnow = bpf_ktime_get_ns();

	struct state_key state_idx;
	__builtin_memset(&state_idx, 0, sizeof(state_idx));
	state_idx.ether_type = ETH_P_IP;
	state_idx.ip_src = bpf_ntohl(ip->saddr);
	state_idx.ip_dst = bpf_ntohl(ip->daddr);

	struct state_val cur = { .state = 0, .tmin = 0, .tmax = 0 };
	struct state_val *state_val = bpf_map_lookup_elem(&state_table, &state_idx);
	if (state_val)
		cur = *state_val;

	struct xfsm_key xfsm_idx = {
		.state = cur.state,
		.cond1 = tnow >= cur.tmin,
		.cond2 = tnow <= cur.tmax,
	};
	struct xfsm_val *xfsm_val = bpf_map_lookup_elem(&xfsm_table, &xfsm_idx);
	if (!xfsm_val)
		return XDP_PASS;

	switch (xfsm_val->update) {
	case UPDATE_OPEN:
		cur.tmin = tnow - (B - 1) * Q;
		cur.tmax = tnow + Q;
		break;
	case UPDATE_SHIFT:
		cur.tmin += Q;
		cur.tmax += Q;
		break;
	default:
		break;
	}
	cur.state = xfsm_val->next_state;
	bpf_map_update_elem(&state_table, &state_idx, &cur, BPF_ANY);

	return xfsm_val->action == ACTION_PASS ? XDP_PASS : XDP_DROP;
}

char LICENSE[] SEC("license") = "GPL";
