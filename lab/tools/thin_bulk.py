#!/usr/bin/env python3
"""thin_bulk.py IN.pcap OUT.pcap [MIN_BYTES]
Makes a fixture of a capture whose bulk is one DCE/RPC transfer (a DC replicating a whole
domain: tens of megabytes): in each TCP direction that carries more than MIN_BYTES
(default 1 MB), only the segments that hold the last fragment of a response or fault are
kept, and on that connection the bare acknowledgements go too (the requests that follow
acknowledge the same bytes; SYN, FIN and RST stay).  The requests, the call ids and their
results stay on the wire; the replicated (sealed) data does not.  A reader sees the removed
segments as gaps and finds the next PDU after each.  A frame between the two DCs arrives
twice (both their ports are mirrored): the second copy goes too.  Classic pcap of Ethernet/IPv4 only,
as the lab's recorder writes it."""
import struct
import sys
from collections import Counter

src, dst = sys.argv[1], sys.argv[2]
min_bytes = int(sys.argv[3]) if len(sys.argv) > 3 else 1 << 20


def records(data):
    at = 24
    while at + 16 <= len(data):
        incl = struct.unpack_from('<I', data, at + 8)[0]
        yield data[at:at + 16], data[at + 16:at + 16 + incl]
        at += 16 + incl


def tcp(frame):
    """(direction key, payload, flags) of an IPv4 TCP frame, else None."""
    if len(frame) < 34 or frame[12:14] != b'\x08\x00' or frame[23] != 6:
        return None
    ihl = (frame[14] & 0x0f) * 4
    t = 14 + ihl
    if len(frame) < t + 20:
        return None
    total = struct.unpack_from('>H', frame, 16)[0]
    doff = (frame[t + 12] >> 4) * 4
    payload = frame[t + doff:14 + total]
    key = (frame[26:30], struct.unpack_from('>H', frame, t)[0], frame[30:34], struct.unpack_from('>H', frame, t + 2)[0])
    return key, payload, frame[t + 13]


def ends_a_response(payload):
    """Whether a response or fault PDU header with PFC_LAST_FRAG starts in the segment."""
    for i in range(len(payload) - 16):
        if payload[i] == 5 and payload[i + 1] == 0 and payload[i + 2] in (2, 3) and payload[i + 3] & 0x02 \
                and payload[i + 4] == 0x10:
            frag = struct.unpack_from('<H', payload, i + 8)[0]
            if 16 <= frag <= 65535:
                return True
    return False


data = open(src, 'rb').read()
assert struct.unpack_from('<I', data, 0)[0] == 0xa1b2c3d4, 'classic little-endian microsecond pcap expected'
volume = Counter()
for _, frame in records(data):
    t = tcp(frame)
    if t:
        volume[t[0]] += len(t[1])
bulk = {k for k, v in volume.items() if v > min_bytes}
reverse = {(k[2], k[3], k[0], k[1]) for k in bulk}
SYN_FIN_RST = 0x07
out = [data[:24]]
kept = dropped = 0
recent = []
for head, frame in records(data):
    # A SPAN copy follows its original within a few frames, byte for byte.
    if frame in recent:
        dropped += 1
        continue
    recent = (recent + [frame])[-8:]
    t = tcp(frame)
    thinned = t and t[0] in bulk and t[1] and not ends_a_response(t[1])
    bare_ack = t and (t[0] in bulk or t[0] in reverse) and not t[1] and not t[2] & SYN_FIN_RST
    if thinned or bare_ack:
        dropped += 1
        continue
    kept += 1
    out.append(head + frame)
open(dst, 'wb').write(b''.join(out))
print('%s: %d frames kept, %d removed (bulk segments, bare acknowledgements, SPAN copies) (%d bulk direction(s) over %d bytes)' % (dst, kept, dropped, len(bulk), min_bytes))
