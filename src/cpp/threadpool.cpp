// Persistent worker pool with a spin-then-block handoff.
//
// Decode calls run() about a hundred times per token with a few microseconds of work each, so
// a mutex + condition variable round trip per call (tens of microseconds to wake a sleeping
// thread) would dominate. Workers instead spin on an epoch counter for a while after each job
// and only then sleep on the condition variable. The caller takes the mutex and notifies only
// when some worker is actually asleep. run_dynamic() jobs admit workers through a ticket counter
// tagged with the job id, so the caller can close a job to latecomers and never waits for a
// worker the OS has not scheduled yet.
#include "threadpool.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <string>
#include <system_error>
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
  // Job counter << 1 | 1 for a run_dynamic job. Bumped once per job; workers wait for a change.
  std::atomic<uint64_t> epoch{0};
  std::atomic<int> pending{0};      // run(): workers still running the current job
  // run_dynamic(): (uint32 job id << 32) | workers admitted so far; kClosed once the caller is done.
  std::atomic<uint64_t> tickets{0};
  std::atomic<int> done{0};         // run_dynamic(): admitted workers that finished
  std::atomic<int> sleepers{0};     // workers blocked (or about to block) on cv
  std::atomic<bool> stop{false};
  std::atomic<bool> busy{false};    // a job is in progress (guards against re-entry)
  std::mutex mu;
  std::condition_variable cv;
  std::mutex error_mu;
  std::exception_ptr error;

  static constexpr uint64_t kClosed = 0xFFFFFFFFu;

  void call(int index, int n_threads) {
    try {
      (*fn)(index, n_threads);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mu);
      if (!error) error = std::current_exception();
    }
  }

  // True when this worker may join the run_dynamic job `job`: it is still open.
  bool admit(uint64_t job) {
    uint64_t v = tickets.load(std::memory_order_acquire);
    while ((v >> 32) == (job & 0xFFFFFFFFu) && (v & 0xFFFFFFFFu) < kClosed) {
      if (tickets.compare_exchange_weak(v, v + 1, std::memory_order_acq_rel, std::memory_order_acquire)) return true;
    }
    return false;
  }

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
      if (now & 1) {
        // A run_dynamic job may already be over (and fn gone): join only through a ticket.
        if (!admit(now >> 1)) continue;
        call(index, n_threads);
        done.fetch_add(1, std::memory_order_acq_rel);
      } else {
        // run() waits for every worker, so this job and its fn are still current.
        call(index, n_threads);
        pending.fetch_sub(1, std::memory_order_acq_rel);
      }
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

  // Publishes the next job (fn must be set); dynamic jobs get an odd epoch.
  void start(bool dynamic) {
    const uint64_t next = (((epoch.load(std::memory_order_relaxed) >> 1) + 1) << 1) | (dynamic ? 1 : 0);
    if (dynamic) {
      done.store(0, std::memory_order_relaxed);
      tickets.store(((next >> 1) & 0xFFFFFFFFu) << 32, std::memory_order_release);
    }
    epoch.store(next, std::memory_order_seq_cst);
    wake_all();
  }

  static void spin_until(const std::atomic<int>& v, int value) {
    int spins = 0;
    while (v.load(std::memory_order_acquire) != value) {
      G3E_CPU_RELAX();
      // A worker may have been descheduled (more threads than free cores): stop hogging the CPU.
      if (++spins > 4096) std::this_thread::yield();
    }
  }

  // Ends a job: clears the busy flag and rethrows the first exception of any thread.
  void finish(std::exception_ptr own_error) {
    fn = nullptr;
    std::exception_ptr worker_error;
    {
      std::lock_guard<std::mutex> lock(error_mu);
      worker_error = error;
      error = nullptr;
    }
    busy.store(false, std::memory_order_release);
    if (own_error) std::rethrow_exception(own_error);
    if (worker_error) std::rethrow_exception(worker_error);
  }
};

ThreadPool::ThreadPool(int n_threads) : n_threads_(n_threads < 1 ? 1 : n_threads), state_(new State) {
  try {
    for (int i = 1; i < n_threads_; ++i) {
      state_->workers.emplace_back([this, i] { state_->worker_loop(i, n_threads_); });
    }
  } catch (const std::system_error& e) {
    // A constructor that throws gets no destructor call. So the workers started so far are
    // stopped here, or they would outlive the state they read.
    stop_workers();
    throw std::runtime_error("failed to start " + std::to_string(n_threads_) + " threads (" + e.what() +
                             "); use fewer threads");
  }
}

ThreadPool::~ThreadPool() { stop_workers(); }

void ThreadPool::stop_workers() {
  state_->stop.store(true, std::memory_order_release);
  state_->epoch.fetch_add(2, std::memory_order_seq_cst);
  {
    std::lock_guard<std::mutex> lock(state_->mu);
  }
  state_->cv.notify_all();
  for (auto& t : state_->workers) t.join();
  delete state_;
  state_ = nullptr;
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
  s.start(false);

  std::exception_ptr own_error;
  try {
    fn(0, n_threads_);
  } catch (...) {
    own_error = std::current_exception();
  }
  State::spin_until(s.pending, 0);
  s.finish(own_error);
}

void ThreadPool::run_dynamic(const std::function<void(int, int)>& fn) {
  if (n_threads_ == 1) {
    fn(0, 1);
    return;
  }
  State& s = *state_;
  if (s.busy.exchange(true, std::memory_order_acquire)) {
    throw std::logic_error("ThreadPool::run_dynamic called while the pool is already running a job");
  }
  s.fn = &fn;
  s.start(true);

  std::exception_ptr own_error;
  try {
    fn(0, n_threads_);
  } catch (...) {
    own_error = std::current_exception();
  }
  // Close the job to latecomers, then wait for the workers that were admitted.
  const uint64_t job = s.tickets.load(std::memory_order_relaxed) >> 32;
  const uint64_t admitted = s.tickets.exchange((job << 32) | State::kClosed, std::memory_order_acq_rel) & 0xFFFFFFFFu;
  State::spin_until(s.done, static_cast<int>(admitted));
  s.finish(own_error);
}

}  // namespace g3e
