// Inference-only CPU forward of kernels.pointwise_mlp (torch reference: reference.py; no numba twin:
// without this library kernels.pointwise_mlp runs its torch reference in chunks).
//
// Layouts (C-contiguous, sizes in int64): x (B, C_0, N), params = for each layer l its weight
// (C_{l+1}, C_l) row-major then its bias (C_{l+1}), dims = [C_0 .. C_L] -> out (B, C_L, N); ReLU
// after every layer but the last.
// Built into one library with the other ops' native.cpp by kernels/_native/__init__.py (the
// system C++ compiler, -O3 -fopenmp -ffp-contract=off: no fused multiply-adds numba would not use)
// and called through ctypes by native.py next to this file. One OpenMP loop per call over the rows
// (b, i), on the libgomp torch has already loaded, so torch.set_num_threads applies.

#include "../_native/native.hpp"

namespace {

// Blocks of POINTS positions, every hidden layer of a block in a small per-thread buffer: the
// (B, 16, N) hidden layers the torch path writes to memory (chunk by chunk) never exist.
template <typename T>
void pointwise_mlp(const T* x, const T* params, const i64* dims, i64 L, i64 B, i64 N, T* out, int threads) {
    constexpr i64 POINTS = 64;
    i64 widest = 1;
    for (i64 l = 0; l <= L; ++l) widest = std::max(widest, dims[l]);
    const i64 blocks = (N + POINTS - 1) / POINTS;
#pragma omp parallel num_threads(threads)
    {
        std::vector<T> even(widest * POINTS), odd(widest * POINTS);
#pragma omp for schedule(static)
        for (i64 task = 0; task < B * blocks; ++task) {
            const i64 b = task / blocks;
            const i64 start = (task - b * blocks) * POINTS;
            const i64 n = std::min(POINTS, N - start);
            const T* in = x + b * dims[0] * N + start;
            i64 in_stride = N;
            const T* p = params;
            for (i64 l = 0; l < L; ++l) {
                const i64 ci = dims[l], co = dims[l + 1];
                const T* weight = p;
                const T* bias = p + co * ci;
                p = bias + co;
                const bool last = l == L - 1;
                T* dst = last ? out + b * co * N + start : (l % 2 == 0 ? even.data() : odd.data());
                const i64 dst_stride = last ? N : POINTS;
                for (i64 o = 0; o < co; ++o) {
                    T* row = dst + o * dst_stride;
                    for (i64 q = 0; q < n; ++q) row[q] = bias[o];
                    for (i64 i = 0; i < ci; ++i) {
                        const T w = weight[o * ci + i];
                        const T* src = in + i * in_stride;
                        for (i64 q = 0; q < n; ++q) row[q] += w * src[q];
                    }
                    if (!last)
                        for (i64 q = 0; q < n; ++q) row[q] = row[q] < T(0) ? T(0) : row[q];  // NaN stays NaN
                }
                in = dst;
                in_stride = dst_stride;
            }
        }
    }
}

}  // namespace

extern "C" {

void pointwise_mlp_fwd_f32(const float* x, const float* params, const i64* dims, i64 L, i64 B, i64 N, float* out,
                           int threads) {
    pointwise_mlp<float>(x, params, dims, L, B, N, out, threads);
}

void pointwise_mlp_fwd_f64(const double* x, const double* params, const i64* dims, i64 L, i64 B, i64 N, double* out,
                           int threads) {
    pointwise_mlp<double>(x, params, dims, L, B, N, out, threads);
}

}  // extern "C"
