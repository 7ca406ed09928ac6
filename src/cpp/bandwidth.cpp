#include "bandwidth.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <vector>

#include "threadpool.h"

namespace g3e {

double measure_read_bandwidth(ThreadPool& pool, int64_t bytes, int repetitions) {
  const int64_t words = std::max<int64_t>(bytes / 64, 1) * 8;  // uint64 words, whole cache lines
  std::unique_ptr<uint64_t, decltype(&std::free)> buffer(
      static_cast<uint64_t*>(std::aligned_alloc(64, static_cast<size_t>(words * 8))), &std::free);
  if (!buffer) throw std::bad_alloc();
  uint64_t* data = buffer.get();
  // Each thread writes its own slice first, so the pages are resident (and local to it).
  pool.run([&](int t, int nt) {
    const int64_t begin = words * t / nt, end = words * (t + 1) / nt;
    for (int64_t i = begin; i < end; ++i) data[i] = static_cast<uint64_t>(i);
  });

  std::vector<uint64_t> sums(pool.size() * 8, 0);  // one cache line per thread
  double best = 0.0;
  for (int r = 0; r < std::max(repetitions, 1); ++r) {
    const auto start = std::chrono::steady_clock::now();
    pool.run([&](int t, int nt) {
      const int64_t begin = words * t / nt / 8 * 8, end = words * (t + 1) / nt / 8 * 8;
      uint64_t acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (int64_t i = begin; i < end; i += 8) {
        for (int j = 0; j < 8; ++j) acc[j] += data[i + j];
      }
      uint64_t total = 0;
      for (uint64_t a : acc) total += a;
      sums[t * 8] = total;  // keeps the loads from being optimised away
    });
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    best = std::max(best, static_cast<double>(words * 8) / seconds);
  }
  return best;
}

}  // namespace g3e
