// SPDX-License-Identifier: GPL-2.0
// The two-colour token bucket as a careful hand-written program: one hash
// lookup, the window [tmin, tmax] updated in place under the entry's
// bpf_spin_lock (so two CPUs never lose a token), and an insert only for a
// source's first packet. bpf_spin_lock needs a plain HASH (LRU values may
// not hold one) and BTF for the value, which clang -g provides.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define B 5
#define Q 1000000000LL

struct bucket {
	struct bpf_spin_lock lock;
	__u32 pad;
	__s64 tmin;
	__s64 tmax;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct bucket);
} buckets SEC(".maps");

SEC("xdp")
int tb_careful(struct xdp_md *ctx)
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

	__u32 src = ip->saddr;
	__s64 now = bpf_ktime_get_ns();
	struct bucket *b = bpf_map_lookup_elem(&buckets, &src);
	if (!b) {
		// First packet of this source: open a full window; it passes
		// without taking a token. Losing the insert race to another CPU
		// is harmless: that CPU opened the same window.
		struct bucket fresh = {
			.tmin = now - (B - 1) * Q,
			.tmax = now + Q,
		};
		bpf_map_update_elem(&buckets, &src, &fresh, BPF_NOEXIST);
		return XDP_PASS;
	}

	int verdict = XDP_PASS;
	bpf_spin_lock(&b->lock);
	if (now < b->tmin) {
		verdict = XDP_DROP;
	} else if (now <= b->tmax) {
		b->tmin += Q;
		b->tmax += Q;
	} else {
		b->tmin = now - (B - 1) * Q;
		b->tmax = now + Q;
	}
	bpf_spin_unlock(&b->lock);
	return verdict;
}

char LICENSE[] SEC("license") = "GPL";
