// Unit tests of the matmul kernels and the thread pool: every ISA this CPU runs against the
// scalar reference, the scalar reference against float64 with the int8 activation error bound,
// and the repacked weights against the GGUF dequantization bit for bit. Exits non-zero on a
// failure and ends with "N passed, N failed".
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>
#include <atomic>

#include "kernels/ggml_types.h"
#include "kernels/matmul.h"
#include "threadpool.h"

using namespace g3e;

namespace {

int g_passed = 0, g_failed = 0;

void check(bool ok, const std::string& what) {
  if (ok) {
    ++g_passed;
  } else {
    ++g_failed;
    std::printf("FAIL: %s\n", what.c_str());
  }
}

// Byte offsets of the fp16 scale / min fields of each block type (random bytes there could be
// inf or nan).
std::vector<int> fp16_fields(GGMLType t) {
  switch (t) {
    case GGMLType::Q4_0: case GGMLType::Q5_0: case GGMLType::Q8_0: return {0};
    case GGMLType::Q4_1: case GGMLType::Q5_1: case GGMLType::Q4_K: case GGMLType::Q5_K: return {0, 2};
    case GGMLType::Q2_K: return {80, 82};
    case GGMLType::Q3_K: return {108};
    case GGMLType::Q6_K: return {208};
    default: return {};
  }
}

const GGMLType kTypes[] = {GGMLType::Q8_0, GGMLType::Q4_0, GGMLType::Q4_1, GGMLType::Q5_0, GGMLType::Q5_1,
                           GGMLType::Q2_K, GGMLType::Q3_K, GGMLType::Q4_K, GGMLType::Q5_K, GGMLType::Q6_K,
                           GGMLType::Q8_K, GGMLType::F16,  GGMLType::BF16, GGMLType::F32};

// rows x cols of `t` as raw GGUF bytes: random quants, scales of random magnitude and sign.
std::vector<uint8_t> random_tensor(GGMLType t, int64_t rows, int64_t cols, std::mt19937& rng) {
  const GGMLTypeInfo* info = ggml_type_info(static_cast<uint32_t>(t));
  const int64_t nbytes = rows * ggml_row_bytes(t, cols);
  std::vector<uint8_t> raw(static_cast<size_t>(nbytes));
  std::uniform_int_distribution<int> byte(0, 255);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (auto& b : raw) b = static_cast<uint8_t>(byte(rng));
  auto put16 = [&](uint8_t* p, uint16_t v) { std::memcpy(p, &v, 2); };
  if (t == GGMLType::F32) {
    for (int64_t i = 0; i < rows * cols; ++i) {
      const float v = normal(rng);
      std::memcpy(&raw[4 * i], &v, 4);
    }
  } else if (t == GGMLType::F16 || t == GGMLType::BF16) {
    for (int64_t i = 0; i < rows * cols; ++i) {
      const float v = normal(rng);
      uint32_t bits;
      std::memcpy(&bits, &v, 4);
      put16(&raw[2 * i], t == GGMLType::F16 ? fp32_to_fp16(v) : static_cast<uint16_t>(bits >> 16));
    }
  } else if (t == GGMLType::Q8_K) {
    for (int64_t i = 0; i < nbytes / info->type_size; ++i) {
      const float d = normal(rng) * 1e-2f;
      std::memcpy(&raw[i * info->type_size], &d, 4);
    }
  } else {
    std::uniform_real_distribution<float> expo(-4.0f, 0.0f);
    for (int64_t i = 0; i < nbytes / info->type_size; ++i)
      for (int off : fp16_fields(t)) put16(&raw[i * info->type_size + off], fp32_to_fp16(normal(rng) * std::pow(10.0f, expo(rng))));
  }
  return raw;
}

struct Case {
  int64_t rows, cols, m;
};

// W (rows, cols) as float, from the GGUF reference dequantization.
std::vector<float> dequantize_all(GGMLType t, const std::vector<uint8_t>& raw, int64_t rows, int64_t cols) {
  std::vector<float> w(static_cast<size_t>(rows * cols));
  const int64_t rb = ggml_row_bytes(t, cols);
  for (int64_t r = 0; r < rows; ++r) dequantize_row(t, raw.data() + r * rb, &w[r * cols], cols);
  return w;
}

void test_lossless_repack(std::mt19937& rng) {
  for (GGMLType t : kTypes) {
    const int64_t bs = ggml_type_info(static_cast<uint32_t>(t))->block_size;
    const int64_t rows = 37, cols = bs == 256 ? 512 : 96;
    const auto raw = random_tensor(t, rows, cols, rng);
    const auto ref = dequantize_all(t, raw, rows, cols);
    PackedWeight w = pack_weight(t, raw.data(), rows, cols, PackMode::kQuantized);
    std::vector<float> row(static_cast<size_t>(cols));
    bool same = true;
    for (int64_t r = 0; r < rows && same; ++r) {
      w.dequantize_row(r, row.data());
      same = std::memcmp(row.data(), &ref[r * cols], cols * sizeof(float)) == 0;
    }
    check(same, std::string("repacked ") + ggml_type_info(static_cast<uint32_t>(t))->name + " (" + w.layout() +
                    ") dequantizes bit-identically");
  }
}

// For every ISA: y against the scalar ISA (same integer sums, same fused multiply-add order, so
// only compiler-level rounding may differ: 1e-6 of sum |w||x|), and the scalar result against
// float64 within the int8 activation bound sum_k |w_k| * xs(k) / 2 (xs = max|x| / 127 of k's
// block of 32) plus 1e-5 of sum |w||x| for float32 accumulation.
void test_matmul(std::mt19937& rng, ThreadPool& pool) {
  const std::vector<std::string> isas = available_isas();
  const Case cases[] = {{37, 96, 1}, {37, 96, 3}, {16, 256, 37}, {1, 512, 2}, {100, 10240, 1},
                        {45, 2048, 5}, {64, 640, 37}, {33, 256, 4}};
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (GGMLType t : kTypes) {
    const GGMLTypeInfo* info = ggml_type_info(static_cast<uint32_t>(t));
    for (const Case& c : cases) {
      if (c.cols % info->block_size != 0) continue;
      const auto raw = random_tensor(t, c.rows, c.cols, rng);
      const auto wf = dequantize_all(t, raw, c.rows, c.cols);
      PackedWeight w = pack_weight(t, raw.data(), c.rows, c.cols, PackMode::kQuantized);
      std::vector<float> x(static_cast<size_t>(c.m * c.cols));
      for (auto& v : x) v = normal(rng) * (normal(rng) > 1.5f ? 20.0f : 1.0f);  // some outliers

      // float64 reference, magnitude and the activation quantization bound.
      std::vector<double> ref(c.m * c.rows), mag(c.m * c.rows), bound(c.m * c.rows);
      for (int64_t i = 0; i < c.m; ++i) {
        std::vector<double> xs(c.cols / 32);
        for (int64_t b = 0; b < c.cols / 32; ++b) {
          float amax = 0;
          for (int k = 0; k < 32; ++k) amax = std::max(amax, std::fabs(x[i * c.cols + 32 * b + k]));
          xs[b] = amax / 127.0;
        }
        for (int64_t n = 0; n < c.rows; ++n) {
          double s = 0, a = 0, e = 0;
          for (int64_t k = 0; k < c.cols; ++k) {
            const double wk = wf[n * c.cols + k], xk = x[i * c.cols + k];
            s += wk * xk;
            a += std::fabs(wk * xk);
            e += std::fabs(wk) * xs[k / 32] / 2;
          }
          ref[i * c.rows + n] = s;
          mag[i * c.rows + n] = a;
          bound[i * c.rows + n] = e;
        }
      }
      std::vector<float> y_scalar;
      for (const std::string& isa : isas) {
        set_isa(isa);
        std::vector<float> y(static_cast<size_t>(c.m * c.rows), NAN);
        matmul(w, x.data(), c.m, y.data(), pool);
        if (isa == "scalar") y_scalar = y;
        const bool quantized = w.layout().rfind("f32", 0) != 0;
        double worst = 0;  // largest error / allowed error
        for (int64_t j = 0; j < c.m * c.rows; ++j) {
          double err, allowed;
          if (isa == "scalar") {
            err = std::fabs(y[j] - ref[j]);
            allowed = (quantized ? bound[j] * 1.001 : 0.0) + 1e-5 * mag[j] + 1e-30;
          } else {
            err = std::fabs(static_cast<double>(y[j]) - y_scalar[j]);
            allowed = 1e-6 * mag[j] + 1e-30;
          }
          worst = std::max(worst, std::isfinite(y[j]) ? err / allowed : INFINITY);
        }
        char buf[200];
        std::snprintf(buf, sizeof buf, "%s %s rows=%lld cols=%lld m=%lld: worst error %.3g of allowed", isa.c_str(),
                      info->name, (long long)c.rows, (long long)c.cols, (long long)c.m, worst);
        check(worst <= 1.0, buf);
      }
    }
  }
  set_isa(isas.back());
}

void test_matmul_multi(std::mt19937& rng, ThreadPool& pool) {
  const int64_t k = 256, m = 3;
  const auto r1 = random_tensor(GGMLType::Q5_0, 48, k, rng);
  const auto r2 = random_tensor(GGMLType::Q4_K, 20, k, rng);
  PackedWeight w1 = pack_weight(GGMLType::Q5_0, r1.data(), 48, k, PackMode::kQuantized);
  PackedWeight w2 = pack_weight(GGMLType::Q4_K, r2.data(), 20, k, PackMode::kQuantized);
  std::vector<float> x(m * k);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (auto& v : x) v = normal(rng);
  std::vector<float> a1(m * 48), a2(m * 20), b1(m * 48), b2(m * 20);
  matmul(w1, x.data(), m, a1.data(), pool);
  matmul(w2, x.data(), m, a2.data(), pool);
  const PackedWeight* ws[2] = {&w1, &w2};
  float* ys[2] = {b1.data(), b2.data()};
  matmul_multi(ws, ys, 2, x.data(), m, pool);
  check(a1 == b1 && a2 == b2, "matmul_multi equals separate matmuls");
}

void test_thread_pool() {
  {
    ThreadPool p(1);
    int calls = 0, seen_n = 0;
    p.run([&](int i, int n) {
      calls += 1 + i;
      seen_n = n;
    });
    check(calls == 1 && seen_n == 1, "1-thread pool runs fn(0, 1) once on the caller");
  }
  ThreadPool p(3);
  std::atomic<int> mask{0}, total{0};
  for (int rep = 0; rep < 2000; ++rep) {
    mask = 0;
    p.run([&](int i, int n) {
      mask.fetch_or(1 << i);
      if (n == 3) total.fetch_add(1);
    });
    if (mask != 7) break;
  }
  check(mask == 7 && total == 6000, "3-thread pool runs every index on every call (2000 calls)");
  bool threw = false;
  try {
    p.run([](int i, int) {
      if (i == 2) throw std::runtime_error("worker failure");
    });
  } catch (const std::runtime_error& e) {
    threw = std::string(e.what()) == "worker failure";
  }
  check(threw, "an exception in a worker reaches the caller");
  mask = 0;
  p.run([&](int i, int) { mask.fetch_or(1 << i); });
  check(mask == 7, "the pool keeps working after an exception");

  // run_dynamic: every item is taken exactly once, whichever threads join; interleaved with
  // run() so that late workers of one kind of job cannot disturb the other.
  bool items_ok = true, run_ok = true;
  for (int rep = 0; rep < 2000 && items_ok && run_ok; ++rep) {
    std::vector<std::atomic<int>> hits(97);
    std::atomic<int> next{0};
    p.run_dynamic([&](int, int) {
      for (int i; (i = next.fetch_add(1)) < 97;) hits[i].fetch_add(1);
    });
    for (auto& h : hits) items_ok &= h.load() == 1;
    mask = 0;
    p.run([&](int i, int) { mask.fetch_or(1 << i); });
    run_ok = mask == 7;
  }
  check(items_ok, "run_dynamic hands out every item exactly once (2000 calls)");
  check(run_ok, "run after run_dynamic still runs every index");
  threw = false;
  try {
    p.run_dynamic([](int i, int) {
      if (i == 0) throw std::runtime_error("caller failure");
    });
  } catch (const std::runtime_error& e) {
    threw = std::string(e.what()) == "caller failure";
  }
  check(threw, "an exception in run_dynamic reaches the caller");
}

void test_set_isa_rejects_unknown() {
  bool threw = false;
  try {
    set_isa("no-such-isa");
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  check(threw, "set_isa rejects an ISA the CPU lacks");
}

}  // namespace

int main() {
  std::mt19937 rng(1234);
  ThreadPool pool(2);
  test_thread_pool();
  test_lossless_repack(rng);
  test_matmul(rng, pool);
  test_matmul_multi(rng, pool);
  test_set_isa_rejects_unknown();
  std::printf("ISAs tested: ");
  for (const auto& s : available_isas()) std::printf("%s ", s.c_str());
  std::printf("\n%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
