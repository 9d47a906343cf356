// SPDX-License-Identifier: GPL-2.0
// The smallest XDP program: the floor every other figure is compared to.
// The same program is also built by flowstate-asm/obj; this clang build
// checks that the two cost the same.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int bare_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
