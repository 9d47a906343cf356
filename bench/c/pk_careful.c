// SPDX-License-Identifier: GPL-2.0
// Port knocking as a careful hand-written program: the semantics of
// examples/portknock.fsm with one hash lookup per packet.
// - LRU hash keyed by ip.src, so a full table evicts the stalest source.
// - The entry is updated in place through the pointer the lookup returned
//   (no bpf_map_update_elem on the hot path); only a first correct knock
//   inserts.
// - The OPEN idle timeout uses bpf_ktime_get_coarse_ns (a few ms of
//   resolution is plenty for 30 s), and last_seen is only stored when the
//   coarse clock moved, so a busy flow rarely dirties its cache line.
#include <stdbool.h>
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
#define OPEN_IDLE_NS (30ULL * 1000000000ULL)
#define SSH_PORT 22

struct flow {
	__u32 state;
	__u32 pad;
	__u64 last_seen;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct flow);
} flows SEC(".maps");

// The port that moves state s (DEFAULT..STEP_3) one step on.
static __always_inline __u16 knock_port(__u32 state)
{
	switch (state) {
	case 0: return 1111;
	case 1: return 2222;
	case 2: return 3333;
	default: return 4444;
	}
}

SEC("xdp")
int pk_careful(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	void *l4;
	__u16 udp_dport = 0, tcp_dport = 0;
	bool is_udp = false, is_tcp = false;

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
		if ((void *)(udp + 1) <= data_end) {
			is_udp = true;
			udp_dport = bpf_ntohs(udp->dest);
		}
	} else if (ip->protocol == IPPROTO_TCP) {
		struct tcphdr *tcp = l4;
		if ((void *)(tcp + 1) <= data_end) {
			is_tcp = true;
			tcp_dport = bpf_ntohs(tcp->dest);
		}
	}

	__u32 src = ip->saddr;
	__u64 now = bpf_ktime_get_coarse_ns();
	struct flow *f = bpf_map_lookup_elem(&flows, &src);
	__u32 state = STATE_DEFAULT;
	if (f) {
		state = f->state;
		if (state == STATE_OPEN && now - f->last_seen > OPEN_IDLE_NS)
			state = STATE_DEFAULT;
	}

	__u32 next;
	int verdict = XDP_DROP;
	if (state == STATE_OPEN) {
		next = STATE_OPEN;
		if (is_tcp && tcp_dport == SSH_PORT)
			verdict = XDP_PASS;
	} else if (is_udp && udp_dport == knock_port(state)) {
		next = state + 1;
	} else {
		next = STATE_DEFAULT;
	}

	if (f) {
		if (f->state != next)
			f->state = next;
		if (f->last_seen != now)
			f->last_seen = now;
	} else if (next != STATE_DEFAULT) {
		struct flow fresh = { .state = next, .last_seen = now };
		bpf_map_update_elem(&flows, &src, &fresh, BPF_NOEXIST);
	}
	return verdict;
}

char LICENSE[] SEC("license") = "GPL";
