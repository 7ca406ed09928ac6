// Persistent worker pool with a spin-then-block handoff.
//
// Decode calls run() about a hundred times per token with a few microseconds of work each, so
// a mutex + condition variable round trip per call (tens of microseconds to wake a sleeping
// thread) would dominate. Workers instead spin on an epoch counter for a while after each job
// and only then sleep on the condition variable; the caller takes the mutex and notifies only
// when some worker is actually asleep.
#include "threadpool.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#include <immintrin.h>
#define G3E_CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define G3E_CPU_RELAX() asm volatile("yield" ::: "memory")
#else
#define G3E_CPU_RELAX() std::this_thread::yield()
#endif

namespace g3e {

namespace {
// How long an idle worker spins before sleeping: long enough to cover the gap between two
// matmuls of one decode step (attention, norms), short enough not to burn a core between
// requests.
constexpr auto kSpinTime = std::chrono::microseconds(2000);
}  // namespace

struct ThreadPool::State {
  std::vector<std::thread> workers;
  const std::function<void(int, int)>* fn = nullptr;
  std::atomic<uint64_t> epoch{0};   // bumped once per run(); workers wait for a change
  std::atomic<int> pending{0};      // workers still running the current job
  std::atomic<int> sleepers{0};     // workers blocked (or about to block) on cv
  std::atomic<bool> stop{false};
  std::atomic<bool> busy{false};    // a run() is in progress (guards against re-entry)
  std::mutex mu;
  std::condition_variable cv;
  std::mutex error_mu;
  std::exception_ptr error;

  void worker_loop(int index, int n_threads) {
    uint64_t seen = 0;
    for (;;) {
      uint64_t now = epoch.load(std::memory_order_acquire);
      if (now == seen) {
        const auto deadline = std::chrono::steady_clock::now() + kSpinTime;
        int spins = 0;
        while ((now = epoch.load(std::memory_order_acquire)) == seen) {
          G3E_CPU_RELAX();
          if (++spins == 256) {
            spins = 0;
            if (std::chrono::steady_clock::now() > deadline) break;
          }
        }
        if (now == seen) {
          std::unique_lock<std::mutex> lock(mu);
          sleepers.fetch_add(1, std::memory_order_seq_cst);
          cv.wait(lock, [&] { return (now = epoch.load(std::memory_order_seq_cst)) != seen; });
          sleepers.fetch_sub(1, std::memory_order_relaxed);
        }
      }
      seen = now;
      if (stop.load(std::memory_order_acquire)) return;
      try {
        (*fn)(index, n_threads);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mu);
        if (!error) error = std::current_exception();
      }
      pending.fetch_sub(1, std::memory_order_acq_rel);
    }
  }

  void wake_all() {
    // seq_cst pairs with the worker's sleepers increment followed by its epoch check: either
    // the worker sees the new epoch, or this load sees the sleeper and notifies under the lock.
    if (sleepers.load(std::memory_order_seq_cst) > 0) {
      { std::lock_guard<std::mutex> lock(mu); }
      cv.notify_all();
    }
  }
};

ThreadPool::ThreadPool(int n_threads) : n_threads_(n_threads < 1 ? 1 : n_threads), state_(new State) {
  for (int i = 1; i < n_threads_; ++i) {
    state_->workers.emplace_back([this, i] { state_->worker_loop(i, n_threads_); });
  }
}

ThreadPool::~ThreadPool() {
  state_->stop.store(true, std::memory_order_release);
  state_->epoch.fetch_add(1, std::memory_order_seq_cst);
  {
    std::lock_guard<std::mutex> lock(state_->mu);
  }
  state_->cv.notify_all();
  for (auto& t : state_->workers) t.join();
  delete state_;
}

void ThreadPool::run(const std::function<void(int, int)>& fn) {
  if (n_threads_ == 1) {
    fn(0, 1);
    return;
  }
  State& s = *state_;
  if (s.busy.exchange(true, std::memory_order_acquire)) {
    throw std::logic_error("ThreadPool::run called while the pool is already running a job");
  }
  s.fn = &fn;
  s.pending.store(n_threads_ - 1, std::memory_order_relaxed);
  s.epoch.fetch_add(1, std::memory_order_seq_cst);
  s.wake_all();

  std::exception_ptr own_error;
  try {
    fn(0, n_threads_);
  } catch (...) {
    own_error = std::current_exception();
  }

  int spins = 0;
  while (s.pending.load(std::memory_order_acquire) != 0) {
    G3E_CPU_RELAX();
    // A worker may have been descheduled (more threads than free cores): stop hogging the CPU.
    if (++spins > 4096) std::this_thread::yield();
  }
  s.fn = nullptr;
  std::exception_ptr worker_error;
  {
    std::lock_guard<std::mutex> lock(s.error_mu);
    worker_error = s.error;
    s.error = nullptr;
  }
  s.busy.store(false, std::memory_order_release);
  if (own_error) std::rethrow_exception(own_error);
  if (worker_error) std::rethrow_exception(worker_error);
}

}  // namespace g3e
