// CPU emulation of the CUDA C subset the kernels/<op>/kernels.cu files may use (see
// kernels/_cuda_c/__init__.py). Force-included before a kernels.cu by the emulation build
// (g++ -include emulation.hpp); never seen by NVRTC.
//
// The subset: extern "C" __global__ kernels and __device__ __forceinline__ functions, one-dimensional
// or three-dimensional grids read through blockIdx/threadIdx/blockDim/gridDim, global-memory loads
// and stores, atomicAdd, the C math library. No shared memory, no __syncthreads, no warp
// intrinsics: each emulated thread runs to its end before the next starts, so only kernels whose
// threads do not wait for each other can be emulated, and those are the only ones allowed.
#pragma once

#include <cmath>
#include <cstdint>
#include <math.h>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// __restrict__ is a g++ keyword already.

struct uint3 {
    unsigned int x, y, z;
};
struct dim3 {
    unsigned int x, y, z;
};

// The launch's coordinates, set by selfmvs_run before each emulated thread.
static uint3 threadIdx;
static uint3 blockIdx;
static dim3 blockDim;
static dim3 gridDim;

// Sequential execution: a plain read-modify-write is atomic. Returns the old value, as CUDA does.
template <class T>
static inline T atomicAdd(T* address, T value) {
    T old = *address;
    *address = old + value;
    return old;
}

template <class T>
static inline T __ldg(const T* address) {
    return *address;
}

// CUDA's integer and floating min/max overloads (the floating ones also exist as fminf/fmin).
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }
static inline long long min(long long a, long long b) { return a < b ? a : b; }
static inline long long max(long long a, long long b) { return a > b ? a : b; }
static inline unsigned int min(unsigned int a, unsigned int b) { return a < b ? a : b; }
static inline unsigned int max(unsigned int a, unsigned int b) { return a > b ? a : b; }
static inline float min(float a, float b) { return fminf(a, b); }
static inline float max(float a, float b) { return fmaxf(a, b); }
static inline double min(double a, double b) { return fmin(a, b); }
static inline double max(double a, double b) { return fmax(a, b); }

// The launcher: dims = {grid x, y, z, block x, y, z}; args[k] points at the k-th argument's value
// (cuLaunchKernel's convention). Threads run in order (x fastest), or in reverse order when
// `reverse` is set, so a test can show that a kernel's result does not depend on thread order.
template <class... Params, std::size_t... I>
static inline void selfmvs_call(void (*kernel)(Params...), void** args, std::index_sequence<I...>) {
    kernel(*static_cast<std::remove_reference_t<Params>*>(args[I])...);
}

template <class... Params>
static inline void selfmvs_run(void (*kernel)(Params...), const unsigned int* dims, void** args, int reverse) {
    gridDim = dim3{dims[0], dims[1], dims[2]};
    blockDim = dim3{dims[3], dims[4], dims[5]};
    const unsigned long long blocks = 1ull * dims[0] * dims[1] * dims[2];
    const unsigned long long threads = 1ull * dims[3] * dims[4] * dims[5];
    for (unsigned long long step = 0; step < blocks * threads; ++step) {
        const unsigned long long flat = reverse ? blocks * threads - 1 - step : step;
        unsigned long long block = flat / threads, thread = flat % threads;
        blockIdx = uint3{static_cast<unsigned int>(block % dims[0]),
                         static_cast<unsigned int>(block / dims[0] % dims[1]),
                         static_cast<unsigned int>(block / dims[0] / dims[1])};
        threadIdx = uint3{static_cast<unsigned int>(thread % dims[3]),
                          static_cast<unsigned int>(thread / dims[3] % dims[4]),
                          static_cast<unsigned int>(thread / dims[3] / dims[4])};
        selfmvs_call(kernel, args, std::index_sequence_for<Params...>{});
    }
}
