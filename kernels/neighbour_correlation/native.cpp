// Inference-only CPU forward of kernels.neighbour_correlation (numba twin: cpu.py).
//
// Layouts (C-contiguous, sizes in int64): feature_cl (B, H, W, C), offsets (B, 2K, H, W)
// -> out (B, G, K, H, W).
// Built into one library with the other ops' native.cpp by kernels/_native/__init__.py (the
// system C++ compiler, -O3 -fopenmp -ffp-contract=off: no fused multiply-adds numba would not use)
// and called through ctypes by native.py next to this file. One OpenMP loop per call over the rows
// (b, i), on the libgomp torch has already loaded, so torch.set_num_threads applies.

#include "../_native/native.hpp"

namespace {

using selfmvs_native::border_corners;

template <typename T>
void neighbour_correlation(const T* feature, const T* offsets, i64 B, i64 H, i64 W, i64 C, i64 K, i64 G, T* out,
                           int threads) {
    const i64 group_size = C / G;
    const T inv_group_size = T(1.0 / double(group_size));
    const i64 plane = H * W;
#pragma omp parallel num_threads(threads)
    {
        std::vector<T> products(C);
#pragma omp for schedule(static)
        for (i64 row = 0; row < B * H; ++row) {
            const i64 b = row / H;
            const i64 i = row - b * H;
            const T* f = feature + b * plane * C;
            for (i64 j = 0; j < W; ++j) {
                const T* centre = f + (i * W + j) * C;
                for (i64 k = 0; k < K; ++k) {
                    i64 x0, y0, x1, y1;
                    double wx, wy;
                    border_corners(offsets, b, K, k, i, j, H, W, x0, y0, x1, y1, wx, wy);
                    const T w00 = T((1 - wx) * (1 - wy));
                    const T w01 = T(wx * (1 - wy));
                    const T w10 = T((1 - wx) * wy);
                    const T w11 = T(wx * wy);
                    const T* f00 = f + (y0 * W + x0) * C;
                    const T* f01 = f + (y0 * W + x1) * C;
                    const T* f10 = f + (y1 * W + x0) * C;
                    const T* f11 = f + (y1 * W + x1) * C;
                    for (i64 c = 0; c < C; ++c)
                        products[c] = centre[c] * (w00 * f00[c] + w01 * f01[c] + w10 * f10[c] + w11 * f11[c]);
                    for (i64 g = 0; g < G; ++g) {
                        T acc = products[g * group_size];
                        for (i64 c = g * group_size + 1; c < (g + 1) * group_size; ++c) acc += products[c];
                        out[((b * G + g) * K + k) * plane + i * W + j] = acc * inv_group_size;
                    }
                }
            }
        }
    }
}

}  // namespace

extern "C" {

void neighbour_correlation_fwd_f32(const float* feature_cl, const float* offsets, i64 B, i64 H, i64 W, i64 C, i64 K,
                                   i64 G, float* out, int threads) {
    neighbour_correlation<float>(feature_cl, offsets, B, H, W, C, K, G, out, threads);
}

void neighbour_correlation_fwd_f64(const double* feature_cl, const double* offsets, i64 B, i64 H, i64 W, i64 C, i64 K,
                                   i64 G, double* out, int threads) {
    neighbour_correlation<double>(feature_cl, offsets, B, H, W, C, K, G, out, threads);
}

}  // extern "C"
