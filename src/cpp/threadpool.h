// A persistent pool of worker threads owned by the runtime.
#pragma once

#include <cstdint>
#include <functional>

namespace g3e {

class ThreadPool {
 public:
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Runs fn(thread_index, n_threads) on every thread (the caller is thread 0) and waits for all.
  void run(const std::function<void(int, int)>& fn);

  // Like run(), for fn that takes its work from a shared queue (an atomic counter), so that any
  // subset of threads finishes it: the caller runs fn(0, n), and a worker that has not started
  // fn by the time the caller's call returns is skipped. A thread that the OS keeps off a core
  // (more runnable threads than cores) then does not hold up the call. Waits for every fn
  // that did start.
  void run_dynamic(const std::function<void(int, int)>& fn);

 private:
  // Stops and joins the workers and frees the state.
  void stop_workers();

  struct State;
  int n_threads_;
  State* state_;
};

}  // namespace g3e
