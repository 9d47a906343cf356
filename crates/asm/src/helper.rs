//! Kernel helper function ids (`enum bpf_func_id`).
//!
//! Numbers checked against the `__BPF_FUNC_MAPPER` list of `include/uapi/linux/bpf.h`
//! (linux-libc-dev 6.1 on the build host: the id is the position in that list).

/// A kernel helper, called with [`crate::Insn::call`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Helper(pub u32);

macro_rules! helpers {
    ($($name:ident = $id:literal, $text:literal;)*) => {
        impl Helper {
            $(
                #[doc = concat!("`bpf_", $text, "`")]
                pub const $name: Helper = Helper($id);
            )*

            /// The helper's name without the `bpf_` prefix, if it is one this crate names.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($id => Some($text),)*
                    _ => None,
                }
            }
        }
    };
}

helpers! {
    MAP_LOOKUP_ELEM = 1, "map_lookup_elem";
    MAP_UPDATE_ELEM = 2, "map_update_elem";
    MAP_DELETE_ELEM = 3, "map_delete_elem";
    KTIME_GET_NS = 5, "ktime_get_ns";
    TRACE_PRINTK = 6, "trace_printk";
    GET_PRANDOM_U32 = 7, "get_prandom_u32";
    GET_SMP_PROCESSOR_ID = 8, "get_smp_processor_id";
    SKB_STORE_BYTES = 9, "skb_store_bytes";
    L3_CSUM_REPLACE = 10, "l3_csum_replace";
    L4_CSUM_REPLACE = 11, "l4_csum_replace";
    TAIL_CALL = 12, "tail_call";
    REDIRECT = 23, "redirect";
    PERF_EVENT_OUTPUT = 25, "perf_event_output";
    SKB_LOAD_BYTES = 26, "skb_load_bytes";
    CSUM_DIFF = 28, "csum_diff";
    XDP_ADJUST_HEAD = 44, "xdp_adjust_head";
    REDIRECT_MAP = 51, "redirect_map";
    XDP_ADJUST_META = 54, "xdp_adjust_meta";
    XDP_ADJUST_TAIL = 65, "xdp_adjust_tail";
    FIB_LOOKUP = 69, "fib_lookup";
    SPIN_LOCK = 93, "spin_lock";
    SPIN_UNLOCK = 94, "spin_unlock";
    KTIME_GET_BOOT_NS = 125, "ktime_get_boot_ns";
    RINGBUF_OUTPUT = 130, "ringbuf_output";
    RINGBUF_RESERVE = 131, "ringbuf_reserve";
    RINGBUF_SUBMIT = 132, "ringbuf_submit";
    RINGBUF_DISCARD = 133, "ringbuf_discard";
    KTIME_GET_COARSE_NS = 160, "ktime_get_coarse_ns";
    LOOP = 181, "loop";
    XDP_LOAD_BYTES = 189, "xdp_load_bytes";
    XDP_STORE_BYTES = 190, "xdp_store_bytes";
    MAP_LOOKUP_PERCPU_ELEM = 195, "map_lookup_percpu_elem";
}

#[cfg(test)]
mod tests {
    use super::Helper;

    #[test]
    fn ids_match_the_uapi_header() {
        // Spot checks of the numbers the code generator depends on.
        assert_eq!(Helper::MAP_LOOKUP_ELEM.0, 1);
        assert_eq!(Helper::KTIME_GET_NS.0, 5);
        assert_eq!(Helper::REDIRECT.0, 23);
        assert_eq!(Helper::XDP_ADJUST_HEAD.0, 44);
        assert_eq!(Helper::REDIRECT_MAP.0, 51);
        assert_eq!(Helper::SPIN_LOCK.0, 93);
        assert_eq!(Helper::RINGBUF_OUTPUT.0, 130);
        assert_eq!(Helper::RINGBUF_DISCARD.0, 133);
        assert_eq!(Helper::KTIME_GET_COARSE_NS.0, 160);
        assert_eq!(Helper::LOOP.0, 181);
    }

    #[test]
    fn names() {
        assert_eq!(Helper::RINGBUF_RESERVE.name(), Some("ringbuf_reserve"));
        assert_eq!(Helper(4).name(), None);
    }
}
