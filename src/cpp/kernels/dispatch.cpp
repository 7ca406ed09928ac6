// The one place where the kernel ISA is chosen: CPU features (CPUID + XGETBV on x86, hwcaps on
// aarch64), optionally lowered by GEMMA3_EDGE_ISA or set_isa().
#include <atomic>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/matmul.h"
#include "kernels/qformat.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#endif
#if defined(__aarch64__) && defined(__linux__)
#include <asm/hwcap.h>
#include <sys/auxv.h>
#endif

namespace g3e {

namespace qk {
namespace {

const IsaKernels kScalar{"scalar", quantize_acts_scalar, qgemm_scalar};
#if defined(__x86_64__) || defined(_M_X64)
const IsaKernels kAvx2{"avx2", quantize_acts_avx2, qgemm_avx2};
const IsaKernels kAvx512{"avx512", quantize_acts_avx512, qgemm_avx512};

uint64_t xgetbv0() {
  uint32_t eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<uint64_t>(edx) << 32) | eax;
}
#endif
#if defined(__aarch64__)
const IsaKernels kNeon{"neon", quantize_acts_neon, qgemm_neon};
#endif

// Kernel sets this CPU can run, lowest first.
std::vector<const IsaKernels*> detect() {
  std::vector<const IsaKernels*> out{&kScalar};
#if defined(__x86_64__) || defined(_M_X64)
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return out;
  const bool osxsave = c & (1u << 27), avx = c & (1u << 28), fma = c & (1u << 12), f16c = c & (1u << 29);
  if (!osxsave || !avx) return out;
  const uint64_t xcr0 = xgetbv0();
  const bool ymm_state = (xcr0 & 0x6) == 0x6;             // SSE and AVX state enabled by the OS
  const bool zmm_state = (xcr0 & 0xE6) == 0xE6;           // plus opmask, ZMM0-15 upper, ZMM16-31
  if (__get_cpuid_max(0, nullptr) < 7) return out;
  __cpuid_count(7, 0, a, b, c, d);
  const bool avx2 = b & (1u << 5), bmi2 = b & (1u << 8);
  const bool avx512f = b & (1u << 16), avx512dq = b & (1u << 17), avx512bw = b & (1u << 30),
             avx512vl = b & (1u << 31), avx512vnni = c & (1u << 11);
  if (ymm_state && avx2 && fma && f16c && bmi2) out.push_back(&kAvx2);
  if (ymm_state && zmm_state && avx512f && avx512dq && avx512bw && avx512vl && avx512vnni && out.size() == 2) {
    out.push_back(&kAvx512);
  }
#elif defined(__aarch64__)
#if defined(__linux__)
  if (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) out.push_back(&kNeon);
#endif
#endif
  return out;
}

const std::vector<const IsaKernels*>& available() {
  static const std::vector<const IsaKernels*> list = detect();
  return list;
}

const IsaKernels* find(const std::string& name) {
  for (const IsaKernels* k : available())
    if (name == k->name) return k;
  return nullptr;
}

const IsaKernels* initial() {
  const char* env = std::getenv("GEMMA3_EDGE_ISA");
  if (env == nullptr || *env == '\0') return available().back();
  if (const IsaKernels* k = find(env)) return k;
  std::string names;
  for (const IsaKernels* k : available()) names += std::string(names.empty() ? "" : ", ") + k->name;
  throw std::runtime_error(std::string("GEMMA3_EDGE_ISA=") + env + " is not available on this CPU (available: " +
                           names + ")");
}

std::atomic<const IsaKernels*>& current() {
  static std::atomic<const IsaKernels*> cur{initial()};
  return cur;
}

}  // namespace

const IsaKernels& active_kernels() { return *current().load(std::memory_order_acquire); }

}  // namespace qk

const char* active_isa() { return qk::active_kernels().name; }

std::vector<std::string> available_isas() {
  std::vector<std::string> out;
  for (const qk::IsaKernels* k : qk::available()) out.emplace_back(k->name);
  return out;
}

void set_isa(const std::string& name) {
  const qk::IsaKernels* k = qk::find(name);
  if (k == nullptr) {
    std::string names;
    for (const std::string& n : available_isas()) names += (names.empty() ? "" : ", ") + n;
    throw std::invalid_argument("ISA '" + name + "' is not available on this CPU (available: " + names + ")");
  }
  qk::current().store(k, std::memory_order_release);
}

}  // namespace g3e
