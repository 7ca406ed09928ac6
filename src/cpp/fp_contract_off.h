// Turns off floating-point contraction for the rest of the including file, which must include
// this header before any other: a fused multiply-add would round "a * b + c" once instead of
// twice and so change results that must match a reference bit for bit.
#pragma once

#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif
