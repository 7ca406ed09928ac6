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

 private:
  struct State;
  int n_threads_;
  State* state_;
};

}  // namespace g3e
