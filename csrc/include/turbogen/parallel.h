// A small persistent thread pool for the CPU kernels: rows are independent, so the kernels split
// [0, rows) into chunks and run them on the pool. Spawning threads per call would cost more than
// a whole sampling step at batch 1, hence the pool.
#pragma once

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include <unistd.h>

namespace turbogen {

class ThreadPool {
 public:
  using ChunkFn = std::function<void(int64_t begin, int64_t end)>;

  static ThreadPool& instance() {
    static ThreadPool* pool = new ThreadPool(default_num_threads());  // never destroyed: no join at exit
    if (pool->owner_pid_ != getpid()) {
      // After fork() the workers do not exist in the child; start a fresh pool (the old one leaks).
      pool = new ThreadPool(pool->num_threads_);
    }
    return *pool;
  }

  int num_threads() const { return num_threads_; }

  // Runs fn over [begin, end) in chunks of at least `grain` items and returns when all are done.
  // fn must not throw: kernels report errors through return codes.
  // Falls back to the calling thread when the range is small, when called from inside a pool task,
  // or when another caller is using the pool.
  void parallel_for(int64_t begin, int64_t end, int64_t grain, const ChunkFn& fn) {
    if (end <= begin) return;
    grain = std::max<int64_t>(grain, 1);
    const int64_t total = end - begin;
    const int64_t max_chunks = (total + grain - 1) / grain;
    const int64_t chunks = std::min<int64_t>(max_chunks, num_threads_);
    std::unique_lock<std::mutex> busy(busy_mutex_, std::try_to_lock);
    if (chunks <= 1 || inside_task() || !busy.owns_lock()) {
      fn(begin, end);
      return;
    }
    ensure_workers();
    uint64_t generation;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_fn_ = &fn;
      job_begin_ = begin;
      job_end_ = end;
      job_chunk_ = (total + chunks - 1) / chunks;
      job_chunks_ = (total + job_chunk_ - 1) / job_chunk_;
      next_chunk_ = 0;
      pending_ = job_chunks_;
      generation = ++generation_;
    }
    wake_.notify_all();
    work_on_job(generation);
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [&] { return pending_ == 0; });
    job_fn_ = nullptr;
  }

 private:
  explicit ThreadPool(int num_threads) : num_threads_(std::max(1, num_threads)), owner_pid_(getpid()) {}

  static int default_num_threads() {
    if (const char* env = std::getenv("TURBOGEN_NUM_THREADS")) {
      const int n = std::atoi(env);
      if (n > 0) return n;
    }
    const unsigned hw = std::thread::hardware_concurrency();
    return hw == 0 ? 1 : static_cast<int>(hw);
  }

  static bool& inside_task() {
    thread_local bool flag = false;
    return flag;
  }

  void ensure_workers() {
    if (!workers_.empty()) return;
    for (int i = 1; i < num_threads_; ++i) {
      workers_.emplace_back([this] { worker_loop(); });
      workers_.back().detach();
    }
  }

  void worker_loop() {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return generation_ != seen; });
        seen = generation_;
      }
      work_on_job(seen);
    }
  }

  // Claims chunks of job `generation` until none are left; the last finisher wakes the caller.
  // Chunks are few (at most one per thread), so claiming them under the mutex costs nothing and
  // keeps a late worker from ever touching a newer job's fields half-written.
  void work_on_job(uint64_t generation) {
    inside_task() = true;
    for (;;) {
      const ChunkFn* fn;
      int64_t lo, hi;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (generation_ != generation || next_chunk_ >= job_chunks_) break;
        const int64_t chunk = next_chunk_++;
        fn = job_fn_;
        lo = job_begin_ + chunk * job_chunk_;
        hi = std::min(job_end_, lo + job_chunk_);
      }
      (*fn)(lo, hi);
      std::lock_guard<std::mutex> lock(mutex_);
      if (--pending_ == 0) done_.notify_all();
    }
    inside_task() = false;
  }

  const int num_threads_;
  const pid_t owner_pid_;
  std::vector<std::thread> workers_;
  std::mutex busy_mutex_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  uint64_t generation_ = 0;
  const ChunkFn* job_fn_ = nullptr;
  int64_t job_begin_ = 0, job_end_ = 0, job_chunk_ = 1, job_chunks_ = 0, next_chunk_ = 0, pending_ = 0;
};

// parallel_for(begin, end, grain, fn): fn(chunk_begin, chunk_end) over [begin, end) on the pool.
inline void parallel_for(int64_t begin, int64_t end, int64_t grain, const ThreadPool::ChunkFn& fn) {
  ThreadPool::instance().parallel_for(begin, end, grain, fn);
}

}  // namespace turbogen
