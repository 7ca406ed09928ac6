// Measures how fast this machine streams memory, the limit for decode speed.
#pragma once

#include <cstdint>

namespace g3e {

class ThreadPool;

// Reads a buffer of `bytes` (rounded down to 64-byte lines) `repetitions` times with all of the
// pool's threads and returns the best rate in bytes per second.
double measure_read_bandwidth(ThreadPool& pool, int64_t bytes, int repetitions);

}  // namespace g3e
