// Metal-on-C++ shim: lets the source that mx.fast.metal_kernel would build
// compile with g++ and run on the CPU, one threadgroup at a time, each thread of
// the group a real std::thread.
//
// Scheduling is adversarial and deterministic for a seed: only one thread runs
// at a time, and it runs until it reaches a synchronisation point (a
// threadgroup_barrier, a SIMD-group collective, or its end); the scheduler then
// picks the next runnable thread in the policy's order (random, lowest index
// first, highest index first).  Every such schedule is one Metal may produce,
// so a kernel that needs a barrier it lacks reads stale threadgroup memory
// under some policy; a barrier not reached by every thread, or a collective
// not reached by every lane of its SIMD group, is reported instead of hanging.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <semaphore>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>


typedef unsigned int uint;
typedef unsigned short ushort;
typedef _Float16 half;
typedef _Float16 float16_t;
struct uint3 { uint x, y, z; };
struct alignas(4) char4 { int8_t x, y, z, w; };
struct alignas(8) uint2 { uint x, y; };
struct alignas(16) uint4 { uint x, y, z, w; };
struct alignas(16) float4 { float x, y, z, w; };

enum class mem_flags { mem_none = 0, mem_device = 1, mem_threadgroup = 2, mem_texture = 4 };

namespace metal {
inline float rsqrt(float x) { return 1.0f / std::sqrt(x); }
inline float precise_divide(float a, float b) { return a / b; }
using std::abs;
using std::exp;
using std::fabs;
using std::fma;
using std::max;
using std::min;
using std::sqrt;
}  // namespace metal
using namespace metal;

extern "C" char __start_emu_tg[] __attribute__((weak));
extern "C" char __stop_emu_tg[] __attribute__((weak));

namespace emu {

inline void poison_threadgroup_memory() {
  if (__start_emu_tg && __stop_emu_tg > __start_emu_tg)
    std::memset(__start_emu_tg, 0xFF, (size_t)(__stop_emu_tg - __start_emu_tg));
}

struct Abort : std::exception {};

enum State { RUNNABLE = 0, AT_BARRIER = 1, AT_SIMD = 2, DONE = 3 };
enum Policy { RANDOM = 0, FORWARD = 1, REVERSE = 2 };

struct Group {
  int n = 0;                 // threads in the group
  int policy = RANDOM;
  std::mt19937_64 rng;
  std::vector<int> state;
  std::vector<std::binary_semaphore*> sem;
  std::binary_semaphore main_sem{0};
  // SIMD exchange: two slots per lane (alternating by op parity), 8 bytes each.
  std::vector<uint64_t> slots[2];
  std::vector<uint64_t> simd_ops;  // collectives done, per thread
  std::string error;
  bool quit = false;
  uint3 group_pos{0, 0, 0}, groups{1, 1, 1};
  uint3 tg_size{1, 1, 1};
  long long switches = 0;
};

inline Group* G = nullptr;
inline thread_local int self = -1;

// Pick the next runnable thread and hand it the token; called by the token holder.
inline void dispatch_next() {
  Group& g = *G;
  std::vector<int> run;
  for (int t = 0; t < g.n; ++t)
    if (g.state[t] == RUNNABLE) run.push_back(t);
  if (run.empty()) {
    bool all_done = true;
    for (int t = 0; t < g.n; ++t) all_done &= (g.state[t] == DONE);
    if (!all_done && g.error.empty())
      g.error = "deadlock: a threadgroup_barrier or SIMD-group collective was not reached by every thread";
    g.main_sem.release();
    return;
  }
  int pick;
  if (g.policy == FORWARD) pick = run.front();
  else if (g.policy == REVERSE) pick = run.back();
  else pick = run[std::uniform_int_distribution<size_t>(0, run.size() - 1)(g.rng)];
  ++g.switches;
  g.sem[pick]->release();
}

inline void block_self() {
  dispatch_next();
  G->sem[self]->acquire();
  if (!G->error.empty() || G->quit) throw Abort();
}

inline const char* kDivergent =
    "a SIMD-group collective was not reached by every lane of its SIMD group (divergent collective)";

// True when every lane of SIMD group `sg` waits at a collective.
inline bool simd_complete(int sg) {
  Group& g = *G;
  int lo = sg * 32, hi = std::min(g.n, lo + 32);
  for (int t = lo; t < hi; ++t)
    if (g.state[t] != AT_SIMD) return false;
  return true;
}

inline void barrier() {
  Group& g = *G;
  g.state[self] = AT_BARRIER;
  bool all = true;
  for (int t = 0; t < g.n; ++t) all &= (g.state[t] == AT_BARRIER);
  if (all)
    for (int t = 0; t < g.n; ++t) g.state[t] = RUNNABLE;
  block_self();
}

template <typename V>
inline V collective(V x, int op, uint arg) {
  static_assert(sizeof(V) <= 8, "SIMD collective on a value wider than 8 bytes");
  Group& g = *G;
  const int lane = self % 32, sg = self / 32, lo = sg * 32, hi = std::min(g.n, lo + 32);
  const int par = (int)(g.simd_ops[self] & 1);
  uint64_t raw = 0;
  std::memcpy(&raw, &x, sizeof(V));
  g.slots[par][self] = raw;
  g.state[self] = AT_SIMD;
  for (int t = lo; t < hi; ++t)
    if (g.state[t] == DONE) {
      g.error = kDivergent;
      throw Abort();
    }
  if (simd_complete(sg))
    for (int t = lo; t < hi; ++t) g.state[t] = RUNNABLE;
  block_self();
  ++g.simd_ops[self];
  auto lane_val = [&](int l) {
    V v;
    std::memcpy(&v, &g.slots[par][lo + l], sizeof(V));
    return v;
  };
  const int width = hi - lo;
  if (op == 0 || op == 1) {
    V acc = lane_val(0);
    for (int l = 1; l < width; ++l) acc = op == 0 ? V(acc + lane_val(l)) : std::max(acc, lane_val(l));
    return acc;
  }
  if (op == 2) return lane_val((int)(arg % 32) < width ? (int)(arg % 32) : lane);
  int src = lane + (int)arg;  // shuffle_down
  return src < width ? lane_val(src) : x;
}

}  // namespace emu

inline void threadgroup_barrier(mem_flags) { emu::barrier(); }
template <typename V> inline V simd_sum(V x) { return emu::collective(x, 0, 0); }
template <typename V> inline V simd_max(V x) { return emu::collective(x, 1, 0); }
template <typename V> inline V simd_shuffle(V x, ushort l) { return emu::collective(x, 2, l); }
template <typename V> inline V simd_shuffle_down(V x, ushort d) { return emu::collective(x, 3, d); }

namespace emu {

// Runs `fn(tid)` for every thread of every group; returns "" or the error.
template <typename F>
inline std::string run_grid(uint3 groups, int threads, int policy, uint64_t seed, F fn, long long* switches) {
  Group g;
  G = &g;
  g.n = threads;
  g.policy = policy;
  g.rng.seed(seed);
  g.state.assign(threads, DONE);
  g.simd_ops.assign(threads, 0);
  g.slots[0].assign(threads, 0);
  g.slots[1].assign(threads, 0);
  g.groups = groups;
  g.tg_size = uint3{(uint)threads, 1, 1};
  for (int t = 0; t < threads; ++t) g.sem.push_back(new std::binary_semaphore(0));
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&g, t, &fn] {
      self = t;
      for (;;) {
        g.sem[t]->acquire();
        if (g.quit) return;
        bool failed = false;
        try {
          fn(t);
        } catch (const Abort&) {
          failed = true;
        } catch (const std::exception& e) {
          g.error = e.what();
          failed = true;
        }
        if (g.quit) return;
        if (failed) {  // this thread holds the token: stop the grid
          if (g.error.empty()) g.error = "kernel aborted";
          g.main_sem.release();
          continue;
        }
        g.state[t] = DONE;
        // A lane that returns while others of its SIMD group wait at a collective diverged.
        int lo = (t / 32) * 32, hi = std::min(g.n, lo + 32);
        bool waiting = false;
        for (int u = lo; u < hi; ++u) waiting |= g.state[u] == AT_SIMD;
        if (waiting) {
          g.error = kDivergent;
          g.main_sem.release();
          continue;
        }
        dispatch_next();
      }
    });
  // Groups in a shuffled order: a kernel must not depend on one group running before another.
  std::vector<uint3> order;
  for (uint z = 0; z < groups.z; ++z)
    for (uint y = 0; y < groups.y; ++y)
      for (uint x = 0; x < groups.x; ++x) order.push_back(uint3{x, y, z});
  if (policy == RANDOM) std::shuffle(order.begin(), order.end(), g.rng);
  else if (policy == REVERSE) std::reverse(order.begin(), order.end());
  for (const uint3& pos : order) {
    g.group_pos = pos;
    for (int t = 0; t < threads; ++t) g.state[t] = RUNNABLE;
    std::fill(g.simd_ops.begin(), g.simd_ops.end(), 0);
    poison_threadgroup_memory();
    dispatch_next();
    g.main_sem.acquire();
    if (!g.error.empty()) break;
  }
  g.quit = true;
  for (int t = 0; t < threads; ++t) g.sem[t]->release();
  for (auto& th : pool) th.join();
  for (auto* s : g.sem) delete s;
  if (switches) *switches = g.switches;
  G = nullptr;
  return g.error;
}

}  // namespace emu

// Metal address spaces, defined last (`thread` would otherwise rename std::thread above).
#define device
#define constant
#define thread
// One group runs at a time, so a static array is the group's memory.  All of them sit in
// one section, poisoned (0xFF bytes: NaN floats, all-ones integers) before every group,
// so a read of threadgroup memory no thread of this group wrote yet is not silently stale.
#define threadgroup static __attribute__((section("emu_tg")))
