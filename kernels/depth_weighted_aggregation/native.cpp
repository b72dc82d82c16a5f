// Inference-only CPU forward of kernels.depth_weighted_aggregation (numba twin: cpu.py).
//
// Layouts (C-contiguous, sizes in int64): cost, inverse (B, D, H*W), offsets (B, 2K, H, W),
// feature_weight (B, K, H, W), scale (B,) -> out (B, D, H, W).
// Built into one library with the other ops' native.cpp by kernels/_native/__init__.py (the
// system C++ compiler, -O3 -fopenmp -ffp-contract=off: no fused multiply-adds numba would not use)
// and called through ctypes by native.py next to this file. One OpenMP loop per call over the rows
// (b, i), on the libgomp torch has already loaded, so torch.set_num_threads applies.

#include "../_native/native.hpp"

namespace {

using selfmvs_native::border_corners;

// sigmoid(4 - x) for x in [0, 8] by the numba module's polynomial (_sigmoid_4_minus)
inline double sigmoid_4_minus(double x) {
    const double y = (x - 4.0) * 0.0625;
    double e = 1.0 + y * (1.0 + y * 0.5 * (1.0 + y * (1.0 / 3.0) * (1.0 + y * 0.25 * (1.0 + y * 0.2 * (1.0 + y * (1.0 / 6.0))))));
    e = e * e;
    e = e * e;
    e = e * e;
    e = e * e;
    return 1.0 / (1.0 + e);
}

template <typename T>
void depth_weighted(const T* cost, const T* offsets, const T* inverse, const T* feature_weight, const T* scale, T eps,
                    i64 B, i64 K, i64 D, i64 H, i64 W, T* out, int threads) {
    const i64 plane = H * W;
#pragma omp parallel num_threads(threads)
    {
        std::vector<uint32_t> corner_index(W * 4), border_index(W * 4);
        std::vector<T> value_coef(W * 4), border_coef(W * 4), samples(W), numerator(D * W), denominator(D * W);
        std::vector<double> distance(W);
#pragma omp for schedule(static)
        for (i64 row = 0; row < B * H; ++row) {
            const i64 b = row / H;
            const i64 i = row - b * H;
            std::fill(numerator.begin(), numerator.end(), T(0));
            std::fill(denominator.begin(), denominator.end(), T(0));
            const double s = double(scale[b]);
            const i64 centre = i * W;
            for (i64 k = 0; k < K; ++k) {
                // _row_coefficients (values only) and _border_coefficients
                for (i64 j = 0; j < W; ++j) {
                    const double sx = double(j) + double(offsets[((b * 2 * K + 2 * k) * plane) + i * W + j]);
                    const double sy = double(i) + double(offsets[((b * 2 * K + 2 * k + 1) * plane) + i * W + j]);
                    uint32_t* ci = &corner_index[j * 4];
                    T* vc = &value_coef[j * 4];
                    if (!(sx > -1 && sx < double(W) && sy > -1 && sy < double(H))) {
                        for (int n = 0; n < 4; ++n) {
                            ci[n] = 0;
                            vc[n] = T(0);
                        }
                    } else {
                        const i64 x0 = i64(std::floor(sx));
                        const i64 y0 = i64(std::floor(sy));
                        const double wx = sx - double(x0);
                        const double wy = sy - double(y0);
                        for (int n = 0; n < 4; ++n) {
                            const int right = n & 1, down = n >> 1;
                            const i64 xc = x0 + right, yc = y0 + down;
                            const bool inside = xc >= 0 && xc < W && yc >= 0 && yc < H;
                            ci[n] = inside ? uint32_t(yc * W + xc) : 0;
                            const double fx = right ? wx : 1 - wx;
                            const double fy = down ? wy : 1 - wy;
                            vc[n] = inside ? T(fx * fy) : T(0);
                        }
                    }
                    i64 x0, y0, x1, y1;
                    double wx, wy;
                    border_corners(offsets, b, K, k, i, j, H, W, x0, y0, x1, y1, wx, wy);
                    uint32_t* bi = &border_index[j * 4];
                    T* bc = &border_coef[j * 4];
                    bi[0] = uint32_t(y0 * W + x0);
                    bi[1] = uint32_t(y0 * W + x1);
                    bi[2] = uint32_t(y1 * W + x0);
                    bi[3] = uint32_t(y1 * W + x1);
                    bc[0] = T((1 - wx) * (1 - wy));
                    bc[1] = T(wx * (1 - wy));
                    bc[2] = T((1 - wx) * wy);
                    bc[3] = T(wx * wy);
                }
                const T* fw = feature_weight + ((b * K + k) * H + i) * W;
                for (i64 d = 0; d < D; ++d) {
                    const T* cst = cost + (b * D + d) * plane;
                    const T* inv = inverse + (b * D + d) * plane;
                    for (i64 j = 0; j < W; ++j) {
                        const uint32_t* ci = &corner_index[j * 4];
                        const T* vc = &value_coef[j * 4];
                        const uint32_t* bi = &border_index[j * 4];
                        const T* bc = &border_coef[j * 4];
                        samples[j] = vc[0] * cst[ci[0]] + vc[1] * cst[ci[1]] + vc[2] * cst[ci[2]] + vc[3] * cst[ci[3]];
                        const T neighbour = bc[0] * inv[bi[0]] + bc[1] * inv[bi[1]] + bc[2] * inv[bi[2]] + bc[3] * inv[bi[3]];
                        distance[j] = double(std::abs(neighbour - inv[centre + j]));
                    }
                    T* num = &numerator[d * W];
                    T* den = &denominator[d * W];
                    for (i64 j = 0; j < W; ++j) {
                        const double weight = double(fw[j]) * sigmoid_4_minus(std::min(distance[j] * s, 8.0));
                        num[j] = T(double(num[j]) + weight * double(samples[j]));
                        den[j] = T(double(den[j]) + weight);
                    }
                }
            }
            for (i64 d = 0; d < D; ++d)
                for (i64 j = 0; j < W; ++j)
                    out[(b * D + d) * plane + i * W + j] = numerator[d * W + j] / (denominator[d * W + j] + eps);
        }
    }
}

}  // namespace

extern "C" {

void depth_weighted_fwd_f32(const float* cost, const float* offsets, const float* inverse, const float* feature_weight,
                            const float* scale, float eps, i64 B, i64 K, i64 D, i64 H, i64 W, float* out, int threads) {
    depth_weighted<float>(cost, offsets, inverse, feature_weight, scale, eps, B, K, D, H, W, out, threads);
}

void depth_weighted_fwd_f64(const double* cost, const double* offsets, const double* inverse, const double* feature_weight,
                            const double* scale, double eps, i64 B, i64 K, i64 D, i64 H, i64 W, double* out, int threads) {
    depth_weighted<double>(cost, offsets, inverse, feature_weight, scale, eps, B, K, D, H, W, out, threads);
}

}  // extern "C"
