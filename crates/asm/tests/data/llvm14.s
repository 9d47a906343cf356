r0 = 0
r1 = -1
w1 = 7
r1 = r2
w1 = w2
r1 += r2
r1 += 5
w1 -= w2
r1 *= 3
r1 /= r2
r1 |= r2
r1 &= 255
r1 ^= r2
r1 <<= 3
r1 >>= r2
r1 s>>= 4
w1 s>>= w2
r1 = -r1
w1 = -w1
r1 = be16 r1
r1 = be32 r1
r1 = be64 r1
r1 = le16 r1
r1 = le32 r1
r1 = le64 r1
r1 = *(u8 *)(r2 + 1)
r1 = *(u16 *)(r2 + 2)
r1 = *(u32 *)(r2 - 4)
r1 = *(u64 *)(r10 - 8)
*(u8 *)(r10 - 1) = r1
*(u16 *)(r10 - 2) = r1
*(u32 *)(r10 - 4) = r1
*(u64 *)(r10 - 8) = r1
lock *(u64 *)(r1 + 8) += r2
lock *(u64 *)(r1 + 8) |= r2
lock *(u64 *)(r1 + 8) &= r2
lock *(u64 *)(r1 + 8) ^= r2
r0 = 1 ll
r1 = 0x1122334455667788 ll
call 1
call 181
goto +3
if r1 == r2 goto +1
if r1 != 5 goto -2
if r1 > r2 goto +0
if r1 >= 5 goto +0
if r1 < r2 goto +0
if r1 <= 5 goto +0
if r1 s> r2 goto +0
if r1 s>= 5 goto +0
if r1 s< r2 goto +0
if r1 s<= -5 goto +0
if w1 == w2 goto +1
if w1 != 5 goto -2
if w1 s< w2 goto +0
exit
r3 = *(u16 *)(r6 + 12)
r3 = be16 r3
if r3 != 0x800 goto +2
r0 = 1
exit
w0 = 2
exit
# LLVM 14's parser lacks the fetching atomics; its disassembler knows the 64-bit ones.
.byte 0xdb, 0x21, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00
.byte 0xdb, 0x21, 0x08, 0x00, 0x41, 0x00, 0x00, 0x00
.byte 0xdb, 0x21, 0xf8, 0xff, 0x51, 0x00, 0x00, 0x00
.byte 0xdb, 0x21, 0x00, 0x00, 0xa1, 0x00, 0x00, 0x00
.byte 0xdb, 0x21, 0x00, 0x00, 0xe1, 0x00, 0x00, 0x00
.byte 0xdb, 0x21, 0x00, 0x00, 0xf1, 0x00, 0x00, 0x00
