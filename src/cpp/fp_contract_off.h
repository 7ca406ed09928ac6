// Floating-point contraction switch: turns it off for the rest of the including file, which must
// include this header first. A fused multiply-add rounds "a * b + c" once instead of twice, so
// it would change results that must match a reference bit for bit.
#pragma once

#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif
