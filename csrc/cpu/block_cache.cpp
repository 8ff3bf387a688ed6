// The CPU ops' large outputs come from a cache of freed blocks (cpu_output, declared in
// common.h and called by new_output).
//
// A training step allocates the same buffers every call: per layer and direction the
// workspace and gradients of [T, B, G] (G = 4H gate columns, the GRU's 3H) and [T, B, H].
// From glibc, a block over its mmap threshold (at most 32 MiB) is fresh memory each call, and
// every 4 KiB page of it faults and is zeroed by the kernel when first written: on the 2-core
// machine of the benchmarks about 2 us a page, 23 ms for one [35, 128, 2600] float32 buffer.
// Blocks of at least kMinBytes therefore go back to this cache when their tensor dies, and a
// request takes the smallest cached block that holds it (at most twice its size), so a loop
// of steps reuses the pages it has touched.  The cache holds at most
// FUSEDRNN_CPU_CACHE_MB MiB of freed blocks (default 1024; 0 turns it off): a block that
// would exceed it makes room by freeing the blocks cached longest ago, so that blocks of
// shapes no longer used (an earlier model, a last short batch) do not keep the current ones
// out.  Thread-safe and fork-safe; never destroyed (tensors may outlive static destruction).
#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>
#include <c10/core/impl/alloc_cpu.h>

#include <pthread.h>

#include <cstdlib>
#include <iterator>
#include <list>
#include <map>
#include <mutex>
#include <new>

#include "../common.h"

namespace fusedrnn {
namespace {

constexpr size_t kMinBytes = size_t(1) << 20;

size_t limit_from_env() {
  const char* v = std::getenv("FUSEDRNN_CPU_CACHE_MB");
  if (v == nullptr || v[0] == '\0') return size_t(1024) << 20;
  return size_t(std::strtoull(v, nullptr, 10)) << 20;
}

class BlockCache final : public c10::Allocator {
 public:
  static BlockCache& get() {
    static BlockCache* cache = new BlockCache();  // leaked on purpose (see above)
    return *cache;
  }

  bool enabled() const { return limit_ > 0; }

  c10::DataPtr allocate(size_t n) override {
    void* p = nullptr;
    size_t cap = n;
    {
      std::lock_guard<std::mutex> guard(mutex_);
      auto it = by_size_.lower_bound(n);
      if (it != by_size_.end() && it->first <= 2 * n) {
        cap = it->first;
        p = it->second->ptr;
        cached_ -= cap;
        age_.erase(it->second);
        by_size_.erase(it);
      }
    }
    if (p == nullptr) p = c10::alloc_cpu(n);
    return {p, new Block{p, cap}, &BlockCache::release, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

 private:
  struct Block {
    void* ptr;
    size_t cap;
  };

  BlockCache() : limit_(limit_from_env()) {
    // A fork while another thread is inside the cache (a DataLoader worker starting mid-step)
    // would leave the child's copy locked forever, or its two indexes half updated: the fork
    // waits for the lock, and the child starts with a fresh one.
    pthread_atfork([] { get().mutex_.lock(); }, [] { get().mutex_.unlock(); },
                   [] { new (&get().mutex_) std::mutex(); });
  }

  static void release(void* ctx) {
    Block* b = static_cast<Block*>(ctx);
    get().put(b->ptr, b->cap);
    delete b;
  }

  void put(void* p, size_t cap) {
    if (cap > limit_) {
      c10::free_cpu(p);
      return;
    }
    std::list<Block> evicted;  // freed after the lock is released
    {
      std::lock_guard<std::mutex> guard(mutex_);
      while (cached_ + cap > limit_) {  // room from the blocks cached longest ago
        const auto oldest = age_.begin();
        auto it = by_size_.lower_bound(oldest->cap);
        while (it->second != oldest) ++it;  // every cached block is in both
        by_size_.erase(it);
        cached_ -= oldest->cap;
        evicted.splice(evicted.end(), age_, oldest);
      }
      age_.push_back(Block{p, cap});
      by_size_.emplace(cap, std::prev(age_.end()));
      cached_ += cap;
    }
    for (const Block& b : evicted) c10::free_cpu(b.ptr);
  }

  const size_t limit_;
  std::mutex mutex_;
  std::list<Block> age_;                                    // the cached blocks, oldest first
  std::multimap<size_t, std::list<Block>::iterator> by_size_;  // capacity -> its entry in age_
  size_t cached_ = 0;
};

}  // namespace

at::Tensor cpu_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  BlockCache& cache = BlockCache::get();
  size_t n = options.dtype().itemsize();
  for (int64_t s : sizes) n *= size_t(s);
  if (!cache.enabled() || n < kMinBytes) return at::empty(sizes, options);
  return at::detail::empty_generic(sizes, &cache, c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   c10::typeMetaToScalarType(options.dtype()), std::nullopt);
}

}  // namespace fusedrnn
