#!/usr/bin/env python3
"""A learning controller for flowstated, using only Python's standard library.

It subscribes to the `controller` events of one instance running
examples/controller/admit.fsm (packet-in), decides each new flow by a
policy (destination ports allowed), installs the decision as the flow's
state through the API (PATCH .../flows/KEY), and releases the held packet
with POST /v1/packet-out out of the instance's own interface: the packet
meets the program again and, now ALLOWED, passes on the fast path.

    python3 admit.py --instance admit --allow-port 53 --allow-port 6666

Copy it as the start of your own controller: `Api` is a complete client of
the daemon's Unix socket (requests and the NDJSON event stream).
"""

import argparse
import http.client
import json
import socket
import sys
import urllib.parse

DEFAULT_SOCKET = "/run/flowstate/flowstated.sock"


class UnixConnection(http.client.HTTPConnection):
    """HTTP/1.1 over flowstated's Unix socket."""

    def __init__(self, path, timeout=None):
        super().__init__("flowstated", timeout=timeout)
        self.unix_path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


class ApiError(Exception):
    pass


class Api:
    def __init__(self, path):
        self.path = path

    def call(self, method, path, body=None):
        """One request; the JSON answer, or ApiError with the daemon's message."""
        conn = UnixConnection(self.path, timeout=60)
        try:
            data = None if body is None else json.dumps(body)
            conn.request(method, path, body=data,
                         headers={"Content-Type": "application/json"})
            answer = conn.getresponse()
            text = answer.read().decode()
        finally:
            conn.close()
        value = json.loads(text) if text else None
        if answer.status >= 300:
            raise ApiError(value.get("error", text) if isinstance(value, dict) else text)
        return value

    def events(self, instance, buffer=1024):
        """Yields the instance's events (dicts) as the daemon streams them.
        A `{"dropped": n}` line (this reader fell behind) is yielded as is."""
        conn = UnixConnection(self.path, timeout=None)
        conn.request("GET", f"/v1/instances/{quote(instance)}/events?buffer={buffer}")
        answer = conn.getresponse()
        if answer.status != 200:
            raise ApiError(answer.read().decode())
        for line in answer:  # http.client undoes the chunked encoding
            line = line.strip()
            if line:  # empty lines are keep-alives
                yield json.loads(line)


def quote(text):
    return urllib.parse.quote(text, safe="")


def udp_checksum_fixed(frame):
    """The frame with its IPv4 UDP checksum computed afresh.

    A packet seen at TC egress may carry only a partial checksum (the
    interface's checksum offload fills it in later); a frame sent with
    packet-out goes out as given, so it needs the full one."""
    if len(frame) < 42 or frame[12:14] != b"\x08\x00" or frame[23] != 17:
        return frame
    ihl = (frame[14] & 0x0F) * 4
    udp = 14 + ihl
    length = int.from_bytes(frame[udp + 4:udp + 6], "big")
    if udp + length > len(frame):
        return frame  # only the head came with the event
    segment = bytearray(frame[udp:udp + length])
    segment[6:8] = b"\x00\x00"
    pseudo = frame[26:34] + bytes([0, 17]) + length.to_bytes(2, "big")
    data = pseudo + bytes(segment) + (b"\x00" if length % 2 else b"")
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    checksum = (~total & 0xFFFF) or 0xFFFF
    return frame[:udp + 6] + checksum.to_bytes(2, "big") + frame[udp + 8:]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", default=DEFAULT_SOCKET, help="flowstated's API socket")
    parser.add_argument("--instance", required=True, help="the running admit.fsm instance")
    parser.add_argument("--allow-port", type=int, action="append", default=[],
                        help="a UDP destination port to allow (repeatable); others are denied")
    args = parser.parse_args()

    api = Api(args.socket)
    instance = api.call("GET", f"/v1/instances/{quote(args.instance)}")
    out = {"dev": instance["dev"]}
    if instance.get("netns"):
        out["netns"] = instance["netns"]
    print(f"controlling {args.instance} on {instance['dev']}; allowed ports: "
          f"{args.allow_port or 'none'}", flush=True)

    for event in api.events(args.instance):
        if "dropped" in event:
            print(f"lost {event['dropped']} event(s): too slow", file=sys.stderr, flush=True)
            continue
        if "closed" in event:
            print(f"the stream ended: {event['closed']}", file=sys.stderr, flush=True)
            return 1
        key = event["key"]  # "DST PORT", as the API addresses flows
        port = int(key.split()[-1])
        decision = "ALLOWED" if port in args.allow_port else "DENIED"
        # Install the decision: later packets of the flow take the fast path.
        api.call("PATCH", f"/v1/instances/{quote(args.instance)}/flows/{quote(key)}",
                 {"state": decision})
        released = 0
        frame = bytes.fromhex(event["head_hex"])
        if decision == "ALLOWED" and len(frame) == event["pkt_len"]:
            # The whole packet came with the event: send it on its way.
            sent = api.call("POST", "/v1/packet-out",
                            dict(out, frame_hex=udp_checksum_fixed(frame).hex()))
            released = sent["bytes"]
        print(f"{key}: {decision}" + (f", released {released} bytes" if released else ""),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
