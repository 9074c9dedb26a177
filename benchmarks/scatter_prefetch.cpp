// The two scatters of exact-mode histogram matching (csrc/cpu/match_histograms.cpp), timed with
// and without prefetching their write targets, side by side in one run:
//
// * radix: one 2048-way pass of the LSD radix sort, b[o[digit(a[i])]++] = a[i] over 8-byte pairs;
// * output: out[index(s[i])] = value(s[i]), the final scatter of matched values in pixel order.
//
// The kernel prefetches kPrefetchAhead = 16 elements ahead; this shows why. Build and run:
//
//     g++ -O3 -march=native -o /tmp/scatter_prefetch benchmarks/scatter_prefetch.cpp
//     /tmp/scatter_prefetch [n = 1048576] [repeats = 15]
//
// Prints the median and best milliseconds per distance (0 = no prefetch) and checks that every
// distance writes the same result.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include <sys/mman.h>

namespace {

// Buffers as the kernel allocates them (huge_alloc in csrc/cpu/kernels.h): 2 MiB aligned, huge pages.
template <typename T>
struct HugeArray {
  explicit HugeArray(int64_t n) : n(n) {
    constexpr size_t kHuge = size_t(1) << 21;
    const size_t bytes = (sizeof(T) * static_cast<size_t>(n) + kHuge - 1) / kHuge * kHuge;
    if (posix_memalign(reinterpret_cast<void**>(&p), kHuge, bytes) != 0) std::abort();
    madvise(p, bytes, MADV_HUGEPAGE);
    std::memset(p, 0, bytes);
  }
  ~HugeArray() { std::free(p); }
  HugeArray(const HugeArray&) = delete;
  HugeArray& operator=(const HugeArray&) = delete;
  T* data() { return p; }
  bool operator==(const std::vector<T>& v) const { return std::equal(v.begin(), v.end(), p); }
  std::vector<T> copy() const { return std::vector<T>(p, p + n); }
  T& operator[](int64_t i) { return p[i]; }
  T* p = nullptr;
  int64_t n;
};

double now_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

template <int D>
void radix_pass(const uint64_t* a, uint64_t* b, int64_t n, int64_t* o) {
  auto digit = [](uint64_t e) { return (e >> 40) & 2047; };
  int64_t i = 0;
  if (D > 0) {
    for (; i + D < n; ++i) {
      __builtin_prefetch(&b[o[digit(a[i + D])]], 1);
      b[o[digit(a[i])]++] = a[i];
    }
  }
  for (; i < n; ++i) b[o[digit(a[i])]++] = a[i];
}

template <int D>
void output_scatter(const uint64_t* s, float* out, int64_t n) {
  int64_t i = 0;
  if (D > 0) {
    for (; i + D < n; ++i) {
      __builtin_prefetch(&out[static_cast<uint32_t>(s[i + D])], 1);
      out[static_cast<uint32_t>(s[i])] = static_cast<float>(s[i] >> 32);
    }
  }
  for (; i < n; ++i) out[static_cast<uint32_t>(s[i])] = static_cast<float>(s[i] >> 32);
}

struct Stat {
  double median, best;
};

template <typename F>
Stat time_it(int repeats, F&& f) {
  std::vector<double> t;
  for (int r = 0; r < repeats; ++r) {
    const double t0 = now_ms();
    f();
    t.push_back(now_ms() - t0);
  }
  std::sort(t.begin(), t.end());
  return {t[t.size() / 2], t[0]};
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t n = argc > 1 ? std::atoll(argv[1]) : (int64_t(1) << 20);
  const int repeats = argc > 2 ? std::atoi(argv[2]) : 15;
  if (n < 64 || n > (int64_t(1) << 31) || repeats < 1) {
    std::fprintf(stderr, "usage: scatter_prefetch [n in 64..2^31] [repeats >= 1]\n");
    return 2;
  }
  std::mt19937_64 g(1);
  HugeArray<uint64_t> a(n), b(n);
  std::vector<uint32_t> perm(n);
  for (int64_t i = 0; i < n; ++i) perm[i] = static_cast<uint32_t>(i);
  std::shuffle(perm.begin(), perm.end(), g);
  for (int64_t i = 0; i < n; ++i) a[i] = (g() & 0xffffffff00000000ull) | perm[i];  // random key, pixel index
  std::vector<int64_t> start(2048, 0);
  for (int64_t i = 0; i < n; ++i) ++start[(a[i] >> 40) & 2047];
  int64_t run = 0;
  for (auto& c : start) {
    const int64_t k = c;
    c = run;
    run += k;
  }
  HugeArray<float> out(n);
  std::vector<uint64_t> want_b;
  std::vector<float> want_out;
  bool same = true;

  std::printf("n = %lld, %d repeats; ms (median / best)\n", static_cast<long long>(n), repeats);
  std::printf("%-9s %-16s %-16s\n", "distance", "radix 2048-way", "output scatter");
  auto row = [&](int d, auto radix, auto scatter) {
    const Stat r = time_it(repeats, [&] {
      std::vector<int64_t> o(start);
      radix(a.data(), b.data(), n, o.data());
    });
    const Stat s = time_it(repeats, [&] { scatter(a.data(), out.data(), n); });
    if (want_b.empty()) {
      want_b = b.copy();
      want_out = out.copy();
    }
    same = same && b == want_b && out == want_out;
    std::printf("%-9d %6.2f / %-7.2f %6.2f / %-7.2f\n", d, r.median, r.best, s.median, s.best);
  };
  row(0, radix_pass<0>, output_scatter<0>);
  row(8, radix_pass<8>, output_scatter<8>);
  row(16, radix_pass<16>, output_scatter<16>);
  row(32, radix_pass<32>, output_scatter<32>);
  std::printf("results identical across distances: %s\n", same ? "yes" : "NO");
  return same ? 0 : 1;
}
