// A CPU emulator for the part of CUDA that psr's kernels use, so that csrc/cuda/*.cu run, slowly
// but with CUDA's semantics, where there is no GPU (CI). Test-only: tests/test_cuda_emu.py builds
// tests/cuda_emu/emu_ops.cpp, which includes this header and then the .cu files as C++.
//
// Model: a launch runs its blocks one after another; a block's threads are fibers (ucontext) on
// the calling OS thread, each running until it reaches a barrier or ends, in an order that
// alternates between forwards and backwards at every barrier phase, so a missing __syncthreads
// shows as a wrong result rather than by luck. __syncthreads releases when every live thread of
// the block waits there (threads that left the kernel no longer count, as on the GPU). Warp
// intrinsics exchange values at a warp barrier and insist on full masks with all 32 lanes taking
// part: lanes that miss one (waiting at a barrier, or gone from the kernel) are reported and the
// process aborts. Launch limits are checked as a Hopper GPU checks them (grid y/z <= 65535 or a
// lower limit a test sets, <= 1024 threads, <= 48 KiB of static + dynamic shared memory without
// opt-in); static and dynamic shared memory start every block as 0xff bytes (NaN), so reads
// before writes show. Device memory is host memory: the ops take CPU tensors.
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <numeric>
#include <tuple>
#include <utility>
#include <vector>

#define PSR_CUDA_EMU 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// Shared arrays are declared with PSR_SHARED_ARRAY (kernels.cuh: `__shared__ T name[n]` on the
// GPU): here every thread of a block takes the same slices, in declaration order, of the block's
// shared buffer, which like dynamic shared memory starts every block as 0xff bytes (NaN), so a
// read of shared memory that no thread of the block wrote shows.
#define __shared__ __shared__is_not_emulated_declare_with_PSR_SHARED_ARRAY  // a static would span blocks
#define PSR_SHARED_ARRAY(T, name, n) T* const name = ::psr_emu::static_shared<T>(n)
#define PSR_EXTERN_SHARED(T, name) T* name = reinterpret_cast<T*>(::psr_emu::dynamic_smem())

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

using cudaStream_t = struct CUstream_st*;
using cudaError_t = int;
constexpr cudaError_t cudaSuccess = 0;

inline uint3 threadIdx{0, 0, 0};  // the running fiber's: every fiber runs on the launching thread
inline uint3 blockIdx{0, 0, 0};
inline dim3 blockDim{1, 1, 1};
inline dim3 gridDim{1, 1, 1};

namespace psr_emu {

// Streaming multiprocessors the emulated device reports (small, so that grid-stride loops loop).
inline int& num_sms() {
  static int n = 2;
  return n;
}

// The gridDim.y limit launches check (65535 on the GPU) and the items per chunk of planes the ops
// batch into one CUB call (chunk_items() there): the ops split their work at these, and tests
// lower them to reach those paths. Here every CUB call is checked against the limit, per-plane
// ones too, so a test keeps single planes below it.
inline int64_t& grid_y_limit() {
  static int64_t n = 65535;
  return n;
}
inline int64_t& cub_items_limit() {
  static int64_t n = int64_t(1) << 24;  // kernels.cuh: chunk_items()
  return n;
}
inline int64_t max_grid_y() { return grid_y_limit(); }
inline int64_t chunk_items() { return cub_items_limit(); }

[[noreturn]] inline void fail(const char* what) {
  std::fprintf(stderr, "psr cuda emulator: %s (block %u,%u,%u thread %u)\n", what, blockIdx.x, blockIdx.y,
               blockIdx.z, threadIdx.x);
  std::fflush(stderr);
  std::abort();
}

enum class State { Ready, AtSync, AtWarp, Done };

struct Fiber {
  ucontext_t ctx;
  std::vector<char> stack;
  State state = State::Ready;
  size_t shared_used = 0;  // bytes of static shared memory this thread's declarations took so far
};

constexpr size_t kSharedLimit = 48 * 1024;  // static + dynamic shared memory without opt-in

struct Block {
  std::vector<Fiber> fibers;
  std::vector<unsigned char> smem;         // dynamic shared memory
  std::vector<unsigned char> static_smem;  // PSR_SHARED_ARRAY slices
  std::vector<uint64_t> slot;  // one warp-exchange slot per thread
  ucontext_t scheduler;
  int running = -1;
  std::function<void()> body;
};

inline Block*& current() {
  static Block* b = nullptr;
  return b;
}

inline void* dynamic_smem() { return current()->smem.data(); }

template <typename T>
inline T* static_shared(size_t n) {
  Block& b = *current();
  Fiber& f = b.fibers[b.running];
  const size_t at = (f.shared_used + 15) / 16 * 16;
  f.shared_used = at + n * sizeof(T);
  if (f.shared_used + (b.smem.size() - 16) > kSharedLimit) fail("more than 48 KiB of shared memory (static + dynamic)");
  return reinterpret_cast<T*>(b.static_smem.data() + at);
}

inline void park(State s) {  // the running fiber waits; the scheduler picks the next
  Block& b = *current();
  Fiber& f = b.fibers[b.running];
  f.state = s;
  if (swapcontext(&f.ctx, &b.scheduler) != 0) fail("swapcontext failed");
}

inline void fiber_entry() {
  Block& b = *current();
  b.body();
  b.fibers[b.running].state = State::Done;
  // returning ends the fiber: uc_link resumes the scheduler
}

inline void check_full(unsigned mask) {
  Block& b = *current();
  const int w0 = static_cast<int>(threadIdx.x) & ~31;
  if (mask != 0xffffffffu || w0 + 32 > static_cast<int>(b.fibers.size())) {
    fail("warp intrinsic with a partial mask or warp (not emulated)");
  }
  for (int l = w0; l < w0 + 32; ++l) {
    if (b.fibers[l].state == State::Done) fail("warp intrinsic after a lane of the warp exited");
  }
}

template <typename T>
inline void exchange_begin(const T& v) {
  static_assert(sizeof(T) <= 8, "warp exchange of at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  current()->slot[threadIdx.x] = bits;
  park(State::AtWarp);
}

template <typename T>
inline T slot_value(int lane) {
  T r;
  const uint64_t bits = current()->slot[(threadIdx.x & ~31u) + lane];
  std::memcpy(&r, &bits, sizeof(T));
  return r;
}

// Runs one block to completion.
inline void run_block(Block& b, int threads, dim3 grid, dim3 block, uint3 bid) {
  constexpr size_t kStack = 64 * 1024;  // the kernels need a few KiB
  b.fibers.resize(threads);
  b.slot.assign(threads, 0);
  for (int t = 0; t < threads; ++t) {
    Fiber& f = b.fibers[t];
    f.state = State::Ready;
    f.shared_used = 0;
    if (f.stack.empty()) f.stack.resize(kStack);
    if (getcontext(&f.ctx) != 0) fail("getcontext failed");
    f.ctx.uc_stack.ss_sp = f.stack.data();
    f.ctx.uc_stack.ss_size = f.stack.size();
    f.ctx.uc_link = &b.scheduler;
    makecontext(&f.ctx, fiber_entry, 0);
  }
  blockIdx = bid;
  blockDim = block;
  gridDim = grid;
  bool forwards = true;
  for (;;) {
    bool ran = false;
    for (int i = 0; i < threads; ++i) {
      const int t = forwards ? i : threads - 1 - i;
      Fiber& f = b.fibers[t];
      if (f.state != State::Ready) continue;
      ran = true;
      b.running = t;
      threadIdx = {static_cast<unsigned>(t), 0, 0};
      if (swapcontext(&b.scheduler, &f.ctx) != 0) fail("swapcontext failed");
    }
    if (ran) forwards = !forwards;
    // Every fiber now waits or is done: release the warps whose live lanes all wait at a warp
    // exchange, else the block barrier if every live thread waits there.
    bool released = false, live = false, all_sync = true;
    for (int w0 = 0; w0 < threads; w0 += 32) {
      bool warp_ready = false, warp_blocked = false;
      for (int t = w0; t < std::min(threads, w0 + 32); ++t) {
        const State s = b.fibers[t].state;
        if (s != State::Done) live = true;
        if (s == State::AtWarp) warp_ready = true;
        if (s == State::AtSync) warp_blocked = true;
        if (s != State::Done && s != State::AtSync) all_sync = false;
      }
      if (warp_ready && !warp_blocked) {
        for (int t = w0; t < std::min(threads, w0 + 32); ++t) {
          if (b.fibers[t].state == State::Done) {
            threadIdx = {static_cast<unsigned>(t), 0, 0};
            fail("a warp intrinsic that lanes of the warp left the kernel without reaching");
          }
        }
        for (int t = w0; t < std::min(threads, w0 + 32); ++t) {
          if (b.fibers[t].state == State::AtWarp) b.fibers[t].state = State::Ready;
        }
        released = true;
      }
    }
    if (!live) return;
    if (released) continue;
    if (all_sync) {
      for (auto& f : b.fibers) {
        if (f.state == State::AtSync) f.state = State::Ready;
      }
      continue;
    }
    threadIdx = {0, 0, 0};
    fail("deadlock: a __syncthreads or warp intrinsic that not every live thread of the block/warp reaches");
  }
}

// The grid of every launch since the last clear, with the kernel (numbered in order of first
// launch): tests look at how work was split, and at which kernel variants ran.
inline std::vector<std::tuple<unsigned, unsigned, unsigned, unsigned>>& launch_log() {
  static std::vector<std::tuple<unsigned, unsigned, unsigned, unsigned>> log;
  return log;
}

inline unsigned kernel_number(const void* kernel) {
  static std::vector<const void*> seen;
  for (size_t i = 0; i < seen.size(); ++i) {
    if (seen[i] == kernel) return static_cast<unsigned>(i);
  }
  seen.push_back(kernel);
  return static_cast<unsigned>(seen.size() - 1);
}

template <typename... KArgs, typename... Args>
void launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t, Args&&... args) {
  launch_log().emplace_back(grid.x, grid.y, grid.z, kernel_number(reinterpret_cast<const void*>(kernel)));
  if (block.y != 1 || block.z != 1) fail("launch: only 1-D blocks are emulated");
  if (block.x == 0 || block.x > 1024) fail("launch: blockDim.x must be 1..1024");
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) fail("launch: empty grid (cudaErrorInvalidConfiguration)");
  if (grid.x > 2147483647u || grid.y > grid_y_limit() || grid.z > 65535) fail("launch: grid dimension too large");
  if (smem > kSharedLimit) fail("launch: more than 48 KiB of dynamic shared memory without opt-in");
  const std::tuple<std::decay_t<KArgs>...> params(std::forward<Args>(args)...);  // by value, as CUDA passes them
  Block b;
  b.body = [&] { std::apply(kernel, params); };
  Block* const outer = current();
  current() = &b;
  for (unsigned bz = 0; bz < grid.z; ++bz) {
    for (unsigned by = 0; by < grid.y; ++by) {
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        b.smem.assign(smem + 16, 0xff);
        b.static_smem.assign(kSharedLimit, 0xff);
        run_block(b, static_cast<int>(block.x), grid, block, uint3{bx, by, bz});
      }
    }
  }
  current() = outer;
}

inline void check(cudaError_t e) {
  if (e != cudaSuccess) fail("a CUDA runtime call failed");
}

}  // namespace psr_emu

inline void __syncthreads() { ::psr_emu::park(::psr_emu::State::AtSync); }

template <typename T>
inline T __ldg(const T* p) {
  return *p;
}

template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask) {
  ::psr_emu::check_full(mask);
  ::psr_emu::exchange_begin(v);
  const T r = ::psr_emu::slot_value<T>((threadIdx.x & 31) ^ lane_mask);
  ::psr_emu::park(::psr_emu::State::AtWarp);
  return r;
}


template <typename T>
inline T atomicAdd(T* a, T v) {
  return __atomic_fetch_add(a, v, __ATOMIC_RELAXED);
}
template <typename T>
inline T atomicMin(T* a, T v) {
  T old = __atomic_load_n(a, __ATOMIC_RELAXED);
  while (v < old && !__atomic_compare_exchange_n(a, &old, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
  return old;
}
template <typename T>
inline T atomicMax(T* a, T v) {
  T old = __atomic_load_n(a, __ATOMIC_RELAXED);
  while (v > old && !__atomic_compare_exchange_n(a, &old, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
  return old;
}

// One device; every kernel is taken to fit 8 resident blocks per SM (the grids the ops size from
// occupancy then match the ones they used before they asked).
inline cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
template <typename Kernel>
inline cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, Kernel, int block_size, size_t smem) {
  if (block_size <= 0 || block_size > 1024 || smem > ::psr_emu::kSharedLimit) ::psr_emu::fail("occupancy query");
  *blocks = 8;
  return cudaSuccess;
}

inline cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t = nullptr) {
  std::memset(p, value, bytes);
  return cudaSuccess;
}

#define C10_CUDA_CHECK(expr) ::psr_emu::check(expr)
#define C10_CUDA_KERNEL_LAUNCH_CHECK() \
  do {                                 \
  } while (0)

// The CUB calls psr makes, done on the host with the same results (radix sorts are stable).
namespace cub {

namespace detail {
inline void check_items(int64_t n) {
  if (n > ::psr_emu::cub_items_limit()) ::psr_emu::fail("a CUB call with more items than the limit");
}
// Prefix sums in the output's type; CUB's first call (no temp storage) only asks for its size.
template <typename I, typename O, typename N>
cudaError_t sum(void* temp, size_t& bytes, I in, O out, N n, bool inclusive) {
  if (temp == nullptr) {
    bytes = 1;
    return cudaSuccess;
  }
  check_items(n);
  using T = std::decay_t<decltype(*out)>;
  T acc = 0;
  for (N i = 0; i < n; ++i) {
    const T v = static_cast<T>(in[i]);
    if (inclusive) acc = acc + v;
    out[i] = acc;
    if (!inclusive) acc = acc + v;
  }
  return cudaSuccess;
}

template <typename K>
K digit_bits(K k, int begin_bit, int end_bit) {
  const int width = end_bit - begin_bit;
  const K shifted = begin_bit >= static_cast<int>(sizeof(K) * 8) ? K(0) : static_cast<K>(k >> begin_bit);
  return width >= static_cast<int>(sizeof(K) * 8) ? shifted : static_cast<K>(shifted & ((K(1) << width) - 1));
}
}  // namespace detail

struct DeviceRadixSort {
  template <typename K, typename N>
  static cudaError_t SortKeys(void* temp, size_t& bytes, const K* in, K* out, N n, int begin_bit = 0,
                              int end_bit = sizeof(K) * 8, cudaStream_t = nullptr) {
    if (temp == nullptr) {
      bytes = 1;
      return cudaSuccess;
    }
    detail::check_items(n);
    std::vector<K> v(in, in + n);
    std::stable_sort(v.begin(), v.end(), [&](K a, K b) {
      return detail::digit_bits(a, begin_bit, end_bit) < detail::digit_bits(b, begin_bit, end_bit);
    });
    std::copy(v.begin(), v.end(), out);
    return cudaSuccess;
  }
  template <typename K, typename V, typename N>
  static cudaError_t SortPairs(void* temp, size_t& bytes, const K* kin, K* kout, const V* vin, V* vout, N n,
                               int begin_bit = 0, int end_bit = sizeof(K) * 8, cudaStream_t = nullptr) {
    if (temp == nullptr) {
      bytes = 1;
      return cudaSuccess;
    }
    detail::check_items(n);
    std::vector<int64_t> order(static_cast<size_t>(n));
    std::iota(order.begin(), order.end(), int64_t(0));
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
      return detail::digit_bits(kin[a], begin_bit, end_bit) < detail::digit_bits(kin[b], begin_bit, end_bit);
    });
    std::vector<K> ks(static_cast<size_t>(n));
    std::vector<V> vs(static_cast<size_t>(n));
    for (size_t i = 0; i < order.size(); ++i) {
      ks[i] = kin[order[i]];
      vs[i] = vin[order[i]];
    }
    std::copy(ks.begin(), ks.end(), kout);
    std::copy(vs.begin(), vs.end(), vout);
    return cudaSuccess;
  }
};

struct DeviceScan {
  template <typename I, typename O, typename N>
  static cudaError_t ExclusiveSum(void* temp, size_t& bytes, I in, O out, N n, cudaStream_t = nullptr) {
    return detail::sum(temp, bytes, in, out, n, false);
  }
  template <typename I, typename O, typename N>
  static cudaError_t InclusiveSum(void* temp, size_t& bytes, I in, O out, N n, cudaStream_t = nullptr) {
    return detail::sum(temp, bytes, in, out, n, true);
  }
};

}  // namespace cub
