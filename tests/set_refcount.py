#!/usr/bin/python3
"""Set the refcount of a qcow2 file's L1 table cluster, in place.

  set_refcount.py FILE VALUE

Follows the spec's packing: entries narrower than a byte fill each byte
from its least significant bit up; wider ones are big-endian.  Prints
where the entry is (refcount block entry K at offset 0x.. mask 0x..,
refcount_bits N) and fails if the entry already holds VALUE, so a test
knows its edit changed something.
"""
import struct
import sys

f = open(sys.argv[1], "r+b")
v = int(sys.argv[2])
h = f.read(104)
C = 1 << struct.unpack_from(">I", h, 20)[0]
l1 = struct.unpack_from(">Q", h, 40)[0]
rt = struct.unpack_from(">Q", h, 48)[0]
bits = 1 << struct.unpack_from(">I", h, 96)[0]
f.seek(rt)
rb = struct.unpack(">Q", f.read(8))[0]
k = l1 // C                        # cluster index; its block is the first
if bits < 8:
    per = 8 // bits
    off, sh = rb + k // per, bits * (k % per)
    mask = ((1 << bits) - 1) << sh
    f.seek(off)
    b = f.read(1)[0]
    assert (b & mask) >> sh != v, "the entry already holds %d" % v
    f.seek(off)
    f.write(bytes([(b & ~mask & 0xff) | v << sh]))
else:
    off, mask = rb + k * bits // 8, (1 << bits) - 1
    f.seek(off)
    assert int.from_bytes(f.read(bits // 8), "big") != v, \
        "the entry already holds %d" % v
    f.seek(off)
    f.write(v.to_bytes(bits // 8, "big"))
print("refcount block entry %d at offset 0x%x mask 0x%02x, refcount_bits %d"
      % (k, off, mask, bits))
