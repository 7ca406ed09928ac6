// Unit tests of the float32 vector kernels (kernels/vec.h) without Python: every function of
// every SIMD implementation this build and CPU run (AVX2 and AVX-512 on x86-64, NEON on
// aarch64) against the scalar reference, on lengths around the vector widths. Exits non-zero
// on a failure and ends with "N passed, N failed".
//
// Tolerances: a sum of n products computed in any order (with or without fused multiply-add)
// is within gamma(n) * sum |a_i b_i| of the exact sum, gamma(n) = n u / (1 - n u) with
// u = 2^-24 (Higham, "Accuracy and Stability of Numerical Algorithms", 2nd ed., section 3.1).
// Two such sums therefore differ by at most 2 gamma(n) sum |a_i b_i|.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/ggml_types.h"
#include "kernels/matmul.h"
#include "kernels/vec.h"

using namespace g3e;

namespace {

int g_passed = 0, g_failed = 0;

void check(bool ok, const std::string& description) {
  if (ok) {
    ++g_passed;
  } else {
    ++g_failed;
    std::printf("FAIL: %s\n", description.c_str());
  }
}

constexpr double kUnitRoundoff = 1.0 / (1 << 24);  // float32 round-to-nearest

double gamma(int64_t n) { return n * kUnitRoundoff / (1.0 - n * kUnitRoundoff); }

// Lengths around the 4-, 8- and 16-lane widths and the sizes Gemma 3 uses (head_dim 256,
// d_model 640 on 270M).
const int64_t kLengths[] = {1, 3, 4, 7, 8, 15, 16, 17, 31, 33, 256, 641, 2048};
// int8 KV rows come in whole blocks of kKVBlock.
const int64_t kBlockLengths[] = {32, 64, 256, 640, 2048};

std::vector<float> normal_vector(std::mt19937& rng, int64_t n, float stddev) {
  std::normal_distribution<float> normal(0.0f, stddev);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = normal(rng);
  return v;
}

std::string label(const VecOps& ops, const char* function, int64_t n) {
  return std::string(ops.isa) + " " + function + " n=" + std::to_string(n);
}

// Largest |got - expected| / allowed over the elements (<= 1 passes).
double worst_ratio(const std::vector<float>& got, const std::vector<float>& expected, const std::vector<double>& allowed) {
  double worst = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::fabs(static_cast<double>(got[i]) - expected[i]);
    worst = std::max(worst, std::isfinite(got[i]) ? err / (allowed[i] + 1e-300) : INFINITY);
  }
  return worst;
}

void test_dot_axpy_scale(const VecOps& ops, const VecOps& ref, std::mt19937& rng) {
  for (int64_t n : kLengths) {
    const auto a = normal_vector(rng, n, 1.0f), b = normal_vector(rng, n, 1.0f);
    double magnitude = 0.0;
    for (int64_t i = 0; i < n; ++i) magnitude += std::fabs(static_cast<double>(a[i]) * b[i]);
    const double err = std::fabs(static_cast<double>(ops.dot(a.data(), b.data(), n)) - ref.dot(a.data(), b.data(), n));
    check(err <= 2 * gamma(n) * magnitude, label(ops, "dot", n));

    // y + alpha x: one rounding with a fused multiply-add, two without, so the two results
    // differ by at most 2 u (|y| + |alpha x|).
    const float alpha = 0.75f;
    auto y = normal_vector(rng, n, 1.0f), y_ref = y;
    std::vector<double> allowed(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) allowed[i] = 2 * kUnitRoundoff * (std::fabs(y[i]) + std::fabs(alpha * a[i]));
    ops.axpy(alpha, a.data(), y.data(), n);
    ref.axpy(alpha, a.data(), y_ref.data(), n);
    check(worst_ratio(y, y_ref, allowed) <= 1.0, label(ops, "axpy", n));

    auto x = a, x_ref = a;
    ops.scale(-1.3f, x.data(), n);
    ref.scale(-1.3f, x_ref.data(), n);
    check(x == x_ref, label(ops, "scale (bit-identical)", n));
  }
}

void test_max_and_exp(const VecOps& ops, const VecOps& ref, std::mt19937& rng) {
  for (int64_t n : kLengths) {
    const auto x = normal_vector(rng, n, 10.0f);
    check(ops.max(x.data(), n) == ref.max(x.data(), n), label(ops, "max", n));

    // The vector exp (Cephes expf method) is within 2.3e-7 relative of exp, std::exp within
    // one ulp (6e-8), so 1e-6 relative leaves room for both. The sums add n such values.
    const float shift = ref.max(x.data(), n);
    auto e = x, e_ref = x;
    const float sum = ops.exp_shifted(e.data(), n, shift);
    const float sum_ref = ref.exp_shifted(e_ref.data(), n, shift);
    std::vector<double> allowed(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) allowed[i] = 1e-6 * e_ref[i] + 1e-37;
    check(worst_ratio(e, e_ref, allowed) <= 1.0, label(ops, "exp_shifted values", n));
    check(std::fabs(sum - sum_ref) <= (1e-6 + 2 * gamma(n)) * sum_ref, label(ops, "exp_shifted sum", n));
  }

  // Extremes: the maximum maps to exactly 1 and huge negative gaps underflow to at most
  // 1.3e-38 (0 in scalar and NEON; AVX2 and AVX-512 clamp the input at -87.3 and return
  // exp(-87.3) = 1.22e-38).
  std::vector<float> extreme = {-1e30f, 0.0f, 88.0f, -88.0f, 1e-30f};
  extreme.resize(25, -200.0f);
  auto e = extreme;
  const float sum = ops.exp_shifted(e.data(), static_cast<int64_t>(e.size()), 88.0f);
  bool finite = std::isfinite(sum);
  for (float v : e) finite = finite && std::isfinite(v) && v >= 0.0f;
  check(finite, std::string(ops.isa) + " exp_shifted stays finite and non-negative on extremes");
  check(e[2] == 1.0f, std::string(ops.isa) + " exp_shifted gives exp(0) = 1");
  check(e[0] <= 1.3e-38f && e[5] <= 1.3e-38f, std::string(ops.isa) + " exp_shifted underflows to about 0");
}

void test_rms_norm_and_gelu(const VecOps& ops, const VecOps& ref, std::mt19937& rng) {
  for (int64_t n : kLengths) {
    const auto x = normal_vector(rng, n, 1.0f);
    auto w = normal_vector(rng, n, 0.1f);
    for (auto& v : w) v += 1.0f;
    std::vector<float> out(static_cast<size_t>(n)), out_ref(static_cast<size_t>(n));
    ops.rms_norm(x.data(), w.data(), out.data(), n, 1e-6f);
    ref.rms_norm(x.data(), w.data(), out_ref.data(), n, 1e-6f);
    // The sums of squares differ by at most 2 gamma(n) relative, the inverse square root
    // by half of that plus a few roundings, and out[i] by two more roundings.
    std::vector<double> allowed(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) allowed[i] = (gamma(n) + 8 * kUnitRoundoff) * std::fabs(out_ref[i]);
    check(worst_ratio(out, out_ref, allowed) <= 1.0, label(ops, "rms_norm", n));

    // In place (out == x), as the model calls it.
    auto inplace = x;
    ops.rms_norm(inplace.data(), w.data(), inplace.data(), n, 1e-6f);
    check(inplace == out, label(ops, "rms_norm in place equals out of place", n));

    // tanh as 1 - 2 / (1 + exp(2u)) has an absolute error of a few ulp of 1 (cancellation
    // near u = 0), so gelu = 0.5 x (1 + tanh) up gets 1e-6 * 0.5 |x up| on top of a 1e-5
    // relative error.
    auto gate = normal_vector(rng, n, 4.0f);
    const auto up = normal_vector(rng, n, 1.0f);
    auto gate_ref = gate;
    for (int64_t i = 0; i < n; ++i) allowed[i] = 0.5 * std::fabs(gate[i] * up[i]) * 1e-6;
    ops.gelu_tanh_mul(gate.data(), up.data(), n);
    ref.gelu_tanh_mul(gate_ref.data(), up.data(), n);
    for (int64_t i = 0; i < n; ++i) allowed[i] += 1e-5 * std::fabs(gate_ref[i]);
    check(worst_ratio(gate, gate_ref, allowed) <= 1.0, label(ops, "gelu_tanh_mul", n));
  }
  std::vector<float> extreme = {-100.0f, -20.0f, 0.0f, 20.0f, 100.0f, -100.0f, 100.0f, 0.5f};
  const std::vector<float> ones(extreme.size(), 1.0f);
  ops.gelu_tanh_mul(extreme.data(), ones.data(), static_cast<int64_t>(extreme.size()));
  check(std::fabs(extreme[0]) <= 1e-5f && std::fabs(extreme[3] - 20.0f) <= 1e-5f && extreme[4] == 100.0f &&
            extreme[2] == 0.0f,
        std::string(ops.isa) + " gelu_tanh_mul limits at -100, 0, 20 and 100");
}

void test_sgemm(const VecOps& ops, const VecOps& ref, std::mt19937& rng) {
  struct Shape {
    int64_t m, n, k;
  };
  const Shape shapes[] = {{1, 1, 1}, {1, 33, 640}, {5, 31, 17}, {7, 64, 256}, {13, 100, 33}, {97, 65, 40}};
  for (const Shape& s : shapes) {
    const auto w = normal_vector(rng, s.n * s.k, 1.0f);
    const auto x = normal_vector(rng, s.m * s.k, 1.0f);
    const int64_t panels = sgemm_panel_count(s.n);
    std::vector<float> packed(static_cast<size_t>(panels * s.k * kSgemmPanel), 0.0f);
    for (int64_t r = 0; r < s.n; ++r) sgemm_pack_row(&w[r * s.k], r, s.k, packed.data());
    // ldy > n checks that nothing is written past column n of a row.
    const int64_t ldy = s.n + 3;
    std::vector<float> y(static_cast<size_t>(s.m * ldy), -7.0f), y_ref = y;
    ops.sgemm(packed.data(), s.n, s.k, x.data(), s.m, 0, panels, y.data(), ldy);
    ref.sgemm(packed.data(), s.n, s.k, x.data(), s.m, 0, panels, y_ref.data(), ldy);
    std::vector<double> allowed(y.size(), 0.0);
    for (int64_t i = 0; i < s.m; ++i) {
      for (int64_t c = 0; c < s.n; ++c) {
        double magnitude = 0.0;
        for (int64_t kk = 0; kk < s.k; ++kk) magnitude += std::fabs(static_cast<double>(x[i * s.k + kk]) * w[c * s.k + kk]);
        allowed[i * ldy + c] = 2 * gamma(s.k) * magnitude;
      }
    }
    check(worst_ratio(y, y_ref, allowed) <= 1.0,
          std::string(ops.isa) + " sgemm m=" + std::to_string(s.m) + " n=" + std::to_string(s.n) +
              " k=" + std::to_string(s.k));
  }
}

// Converting KV cache rows is exact, so every implementation must match the scalar one bit
// for bit (attention's independence from batching relies on it).
void test_kv_rows(const VecOps& ops, const VecOps& ref, std::mt19937& rng) {
  for (int64_t n : kLengths) {
    const auto values = normal_vector(rng, n, 1.0f);
    std::vector<uint16_t> half(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) half[i] = fp32_to_fp16(values[i]);
    std::vector<float> out(static_cast<size_t>(n)), expected(static_cast<size_t>(n));
    ops.f16_to_f32(half.data(), out.data(), n);
    ref.f16_to_f32(half.data(), expected.data(), n);
    bool exact = out == expected;
    for (int64_t i = 0; i < n; ++i) exact = exact && expected[i] == fp16_to_fp32(half[i]);
    check(exact, label(ops, "f16_to_f32", n));
  }
  for (int64_t n : kBlockLengths) {
    const auto values = normal_vector(rng, n, 1.0f);
    std::vector<int8_t> q(static_cast<size_t>(n));
    std::vector<float> scales(static_cast<size_t>(n / kKVBlock));
    quantize_kv_q8(values.data(), q.data(), scales.data(), n);
    std::vector<float> out(static_cast<size_t>(n)), expected(static_cast<size_t>(n));
    ops.q8_to_f32(q.data(), scales.data(), out.data(), n);
    ref.q8_to_f32(q.data(), scales.data(), expected.data(), n);
    bool exact = out == expected;
    for (int64_t i = 0; i < n; ++i) exact = exact && expected[i] == scales[i / kKVBlock] * static_cast<float>(q[i]);
    check(exact, label(ops, "q8_to_f32", n));
  }
}

// Vector kernel sets to test: those of the matmul ISAs this CPU runs, and NEON on any aarch64
// CPU (it needs only the ARMv8.0 baseline, where the matmul kernels also need dotprod).
std::vector<const VecOps*> implementations_to_test() {
  std::vector<const VecOps*> out;
  for (const std::string& isa : available_isas()) {
    const VecOps* ops = vec_ops_for(isa.c_str());
    if (ops != nullptr && isa != "scalar") out.push_back(ops);
  }
#if defined(__aarch64__)
  bool has_neon = false;
  for (const VecOps* ops : out) has_neon = has_neon || std::strcmp(ops->isa, "neon") == 0;
  if (!has_neon) out.push_back(&vec_ops_neon());
#endif
  return out;
}

}  // namespace

// dot_rows and axpy_rows must give, bit for bit, what the same implementation's dot and a
// sequence of its axpy calls give (attention's independence from batching rests on it), and
// agree with the scalar reference within the bound above.
void test_attention_rows(const VecOps& ops, const VecOps& ref, std::mt19937& rng) {
  struct Shape {
    int64_t rows, count, n;
  };
  for (const Shape& s : {Shape{1, 1, 1}, Shape{2, 64, 256}, Shape{4, 63, 256}, Shape{7, 5, 40}, Shape{64, 64, 128},
                         Shape{5, 3, 33}, Shape{9, 17, 128}}) {
    const int64_t ldq = s.n + 3, ldk = s.n + 7;
    const auto q = normal_vector(rng, s.rows * ldq, 1.0f);
    const auto k = normal_vector(rng, s.count * ldk, 1.0f);
    std::vector<float> scores(static_cast<size_t>(s.rows * s.count)), ref_scores(scores.size());
    ops.dot_rows(q.data(), ldq, s.rows, k.data(), ldk, s.count, s.n, scores.data(), s.count);
    ref.dot_rows(q.data(), ldq, s.rows, k.data(), ldk, s.count, s.n, ref_scores.data(), s.count);
    bool same = true, close = true;
    for (int64_t r = 0; r < s.rows; ++r) {
      for (int64_t j = 0; j < s.count; ++j) {
        const float* qr = &q[r * ldq];
        const float* kj = &k[j * ldk];
        same = same && scores[r * s.count + j] == ops.dot(qr, kj, s.n);
        double magnitude = 0.0;
        for (int64_t i = 0; i < s.n; ++i) magnitude += std::fabs(static_cast<double>(qr[i]) * kj[i]);
        close = close && std::fabs(scores[r * s.count + j] - ref_scores[r * s.count + j]) <= 2 * gamma(s.n) * magnitude;
      }
    }
    const std::string shape = std::to_string(s.rows) + "x" + std::to_string(s.count) + "x" + std::to_string(s.n);
    check(same, std::string(ops.isa) + " dot_rows equals dot " + shape);
    check(close, std::string(ops.isa) + " dot_rows near scalar " + shape);

    const auto p = normal_vector(rng, s.rows * s.count, 1.0f);
    const auto start = normal_vector(rng, s.rows * s.n, 1.0f);
    std::vector<float> out = start, by_axpy = start;
    ops.axpy_rows(p.data(), s.count, s.rows, k.data(), ldk, s.count, s.n, out.data(), s.n);
    for (int64_t r = 0; r < s.rows; ++r) {
      for (int64_t j = 0; j < s.count; ++j) ops.axpy(p[r * s.count + j], &k[j * ldk], &by_axpy[r * s.n], s.n);
    }
    check(out == by_axpy, std::string(ops.isa) + " axpy_rows equals axpy " + shape);
  }
}

int main() {
  std::mt19937 rng(1234);
  const VecOps& ref = vec_ops_scalar();
  const auto implementations = implementations_to_test();
  for (const VecOps* ops : implementations) {
    test_dot_axpy_scale(*ops, ref, rng);
    test_max_and_exp(*ops, ref, rng);
    test_rms_norm_and_gelu(*ops, ref, rng);
    test_sgemm(*ops, ref, rng);
    test_kv_rows(*ops, ref, rng);
    test_attention_rows(*ops, ref, rng);
  }
  // The scalar reference on the extremes too, so the table above is not only self-consistent.
  test_max_and_exp(ref, ref, rng);
  check(!implementations.empty() || available_isas().size() == 1,
        "every SIMD ISA the CPU runs has a vector kernel set");

  std::printf("vector kernel sets tested against scalar: ");
  for (const VecOps* ops : implementations) std::printf("%s ", ops->isa);
  std::printf("\n%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
