#!/usr/bin/python3
"""Write one malformed variant of a valid bitmap file per constraint.

  malformed.py BASE OUTDIR  -> prints "FILE<TAB>expected message fragment"

BASE is a valid file with two bitmaps (made by the CLI).  Offsets are
read from BASE itself, so the cases follow the writer's layout.
"""
import os
import struct
import sys

base, outdir = sys.argv[1], sys.argv[2]
draft = len(sys.argv) > 3 and sys.argv[3] == "draft"
data = bytearray(open(base, "rb").read())
be32 = lambda o: struct.unpack_from(">I", data, o)[0]
be64 = lambda o: struct.unpack_from(">Q", data, o)[0]
C = 1 << be32(20)
EXT = 112                      # bitmaps extension header (magic, length)
RT = be64(48)                  # refcount_table_offset
RB = be64(RT)                  # first refcount block
if not draft:
    DIR = be64(EXT + 8 + 16)   # bitmap_directory_offset
    E0 = DIR                   # first directory entry
    name0 = struct.unpack_from(">H", data, E0 + 18)[0]
    E1 = E0 + (24 + name0 + 7) // 8 * 8
    T0 = be64(E0)              # bitmap table of the first bitmap
cases = []


def case(name, expect, edits, truncate=None):
    d = bytearray(data)
    for off, fmt, val in edits:
        if isinstance(val, bytes):
            d[off:off + len(val)] = val
        else:
            struct.pack_into(fmt, d, off, val)
    if truncate is not None:
        d = d[:truncate]
    path = os.path.join(outdir, name + ".qcow2")
    open(path, "wb").write(d)
    cases.append((path, expect))


if draft:
    # The draft layout: 16-byte extension, 30-byte fixed entries.
    NB = EXT + 8
    DSIZE = EXT + 12
    DOFF = EXT + 16
    DIR = be64(DOFF)
    E0 = DIR
    name0 = struct.unpack_from(">H", data, E0 + 28)[0]
    E1 = E0 + (30 + name0 + 7) // 8 * 8
    T0 = be64(E0)
    case("d-nb-0", "nb_dirty_bitmaps (offset 0x78) is 0", [(NB, ">I", 0)])
    case("d-dir-size-0", "dirty_bitmap_directory_size (offset 0x7c) is 0", [(DSIZE, ">I", 0)])
    case("d-dir-size-1024nb", "must be 1..1024 * nb_dirty_bitmaps", [(DSIZE, ">I", 2049)])
    case("d-dir-size-sum", "entries take", [(DSIZE, ">I", be32(DSIZE) + 8)])
    case("d-dir-offset", "dirty_bitmap_directory_offset (offset 0x80)", [(DOFF, ">Q", DIR + 8)])
    case("d-nb-more", "ends after 2 of nb_dirty_bitmaps 3", [(NB, ">I", 3)])
    case("d-virtual-bits-0", "nb_virtual_bits is 0", [(E0 + 8, ">Q", 0)])
    case("d-table-size", "needs exactly 1", [(E0 + 16, ">I", 2)])
    case("d-table-size-max", "bitmap_table_size (offset", [(E0 + 16, ">I", 0x8000001)])
    case("d-granularity", "granularity_bits is 23, outside 0..22", [(E0 + 20, ">I", 23)])
    case("d-flags-reserved", "reserved bits set", [(E0 + 24, ">I", 16)])
    case("d-auto-no-self", "auto is set without self", [(E0 + 24, ">I", 4)])
    case("d-name-empty", "name_size is 0", [(E0 + 28, ">H", 0)])
    case("d-padding", "padding byte", [(E0 + 30 + name0, ">B", 0x55)])
    case("d-duplicate", "is used twice", [(E1 + 30, "", bytes(data[E0 + 30:E0 + 30 + name0]))])
    case("d-table-bit0", "reserved bits set", [(T0, ">Q", be64(T0) | 1)])
    case("d-table-reserved", "reserved bits set", [(T0, ">Q", be64(T0) | (1 << 60))])
    case("d-table-offset", "bitmap_table_offset (offset", [(E0, ">Q", 0)])
    for path, expect in cases:
        print("%s\t%s" % (path, expect))
    sys.exit(0)

case("magic", "not a qcow2 file", [(0, ">I", 0x12345678)])
case("version2", "qcow2 version 2", [(4, ">I", 2)])
case("cluster-bits-8", "cluster_bits (offset 20) is 8", [(20, ">I", 8)])
case("cluster-bits-22", "cluster_bits (offset 20) is 22", [(20, ">I", 22)])
case("backing", "must not have a backing file", [(8, ">Q", 4096)])
case("crypt", "crypt_method (offset 32) is 1", [(32, ">I", 1)])
case("l1-too-small", "L1 table is too small", [(36, ">I", 0)])
case("refcount-offset", "refcount_table_offset (offset 48)", [(48, ">Q", RT + 512)])
case("refcount-clusters-0", "refcount_table_clusters (offset 56) is 0", [(56, ">I", 0)])
case("snapshots", "nb_snapshots (offset 60) is 1", [(60, ">I", 1)])
case("incompat-dirty", "has the dirty bit", [(72, ">Q", 1)])
case("incompat-corrupt", "has the corrupt bit", [(72, ">Q", 2)])
case("incompat-unknown", "unknown feature bits", [(72, ">Q", 1 << 40)])
case("refcount-order", "refcount_order (offset 96) is 7", [(96, ">I", 7)])
case("header-length", "header_length (offset 100) is 100", [(100, ">I", 100)])
case("short", "too short for a qcow2 header", [], truncate=50)
case("ext-draft", "dirty_bitmap_directory_size (offset 0x7c) is 0", [(EXT + 4, ">I", 16)])
case("ext-length", "has length 20, must be 24", [(EXT + 4, ">I", 20)])
case("ext-overflow", "past the end of cluster 0", [(EXT + 4, ">I", C)])
case("nb-bitmaps-0", "nb_bitmaps (offset 0x78) is 0", [(EXT + 8, ">I", 0)])
case("nb-bitmaps-max", "the maximum is 65535", [(EXT + 8, ">I", 70000)])
case("ext-reserved", "reserved field (offset 0x7c)", [(EXT + 12, ">I", 1)])
case("dir-size-0", "bitmap_directory_size (offset 0x80) is 0", [(EXT + 16, ">Q", 0)])
case("dir-size-max", "exceeds the maximum 67107840", [(EXT + 16, ">Q", 67107841)])
case("dir-offset", "bitmap_directory_offset (offset 0x88)", [(EXT + 24, ">Q", DIR + 8)])
case("dir-beyond-eof", "lies beyond the end of the file", [(EXT + 24, ">Q", 1 << 40)])
case("dir-size-more", "entries take", [(EXT + 16, ">Q", be64(EXT + 16) + 8)])
case("nb-fewer", "more bitmaps found than nb_bitmaps says", [(EXT + 8, ">I", 1)])
case("nb-more", "ends after 2 of nb_bitmaps 3", [(EXT + 8, ">I", 3)])
case("table-offset-0", "bitmap_table_offset (offset", [(E0, ">Q", 0)])
case("table-offset-unaligned", "must be non-zero and cluster-aligned", [(E0, ">Q", T0 + 512)])
case("table-size-0", "bitmap_table_size (offset", [(E0 + 8, ">I", 0)])
case("table-size-inexact", "needs exactly 1", [(E0 + 8, ">I", 2)])
case("table-size-max", "bitmap_table_size (offset", [(E0 + 8, ">I", 0x8000001)])
case("flags-reserved", "flags (offset", [(E0 + 12, ">I", 4 | 2)])
case("type", "must be 1 (dirty tracking)", [(E0 + 16, ">B", 2)])
case("granularity-8", "granularity_bits (offset", [(E0 + 17, ">B", 8)])
case("granularity-32", "is 32, outside 9..31", [(E0 + 17, ">B", 32)])
case("name-empty", "name_size is 0", [(E0 + 18, ">H", 0)])
case("name-long", "runs past the end of the directory", [(E0 + 18, ">H", 1024)])
case("extra-data", "extra data is not supported", [(E0 + 20, ">I", 8)])
case("name-nul", "contains a NUL byte", [(E0 + 24, ">B", 0)])
case("padding", "padding byte", [(E0 + 24 + name0, ">B", 0x55)])
case("duplicate", "is used twice", [(E1 + 24, "", bytes(data[E0 + 24:E0 + 24 + name0]))])
case("table-reserved", "reserved bits set", [(T0, ">Q", be64(T0) | 2)])
case("table-all-ones-with-offset", "bit 0 must be 0", [(T0, ">Q", be64(T0) | 1)])
case("table-beyond-eof", "lies beyond the end of the file", [(T0, ">Q", 1 << 40)])
case("table-unaligned", "data cluster offset", [(T0, ">Q", be64(T0) + 512)])
case("refcount-zero", "refcount is 0", [(RB + 2 * (DIR // C), ">H", 0)])
case("refcount-entry", "not a cluster-aligned offset", [(RT, ">Q", RB + 512)])
case("leak", "leaked cluster", [(RB + 2 * (len(data) // C + 5), ">H", 1)])
case("refcount-2", "leaked cluster", [(RB + 2 * (DIR // C), ">H", 2)])
case("autoclear-clear", "every bitmap is inconsistent", [(88, ">Q", 0)])
case("l1-reserved", "reserved bits set", [(be64(40), ">Q", 1 << 60)])

for path, expect in cases:
    print("%s\t%s" % (path, expect))
