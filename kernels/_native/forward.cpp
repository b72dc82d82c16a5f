// Inference-only CPU forwards of three ops, compiled once per machine by kernels/_native/__init__.py
// (the system C++ compiler, OpenMP) and called through ctypes. They let `selfmvs infer` run
// without numba's JIT in the process (~120 MB of resident memory: numba's typing and target
// contexts and LLVM). Each function mirrors the numba kernel of the same op line for line,
// including where numba computes in float64 (sample positions, corner dot products) and where
// in the features' dtype, so the two CPU paths agree to rounding (the tests check both against
// the torch references). Built with -ffp-contract=off: no fused multiply-adds numba would not use.
//
// Threads: one OpenMP loop per call over the rows (b, i). The library links libgomp.so.1, which
// torch's CPU wheel has already loaded under that name, so these loops run on torch's own pool
// and honour torch.set_num_threads (no second pool competing for a small machine's cores).
//
// Layouts (all C-contiguous, sizes in int64):
//   warp_correlation: ref (B, C, H, W), src_cl (B, Hs, Ws, C), proj (B, 12) = [M row-major, T],
//     consts [0.5, min z, Ws - 1, Hs - 1, 1 / (C / G)], depth (B, D, H, W)
//     -> correlation (B, G, D, H, W), valid (B, D, H, W) as bytes 0 / 1
//   neighbour_correlation: feature_cl (B, H, W, C), offsets (B, 2K, H, W) -> out (B, G, K, H, W)
//   depth_weighted: cost, inverse (B, D, H*W), offsets (B, 2K, H, W), feature_weight (B, K, H, W),
//     scale (B,) -> out (B, D, H, W)
//   pointwise_mlp: x (B, C_0, N), params = for each layer l its weight (C_{l+1}, C_l) row-major then
//     its bias (C_{l+1}), dims = [C_0 .. C_L] -> out (B, C_L, N); ReLU after every layer but the last.
//     No numba twin: without this library kernels.pointwise_mlp runs its torch reference in chunks.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

typedef int64_t i64;

namespace {

// ---------------------------------------------------------------------------------------------
// warp_correlation (numba: kernels/warp_correlation/cpu.py, _fwd_row)
// ---------------------------------------------------------------------------------------------

// CC, GG > 0: channels and groups fixed at compile time (the loops unroll); 0: taken from C, G.
template <typename T, int CC, int GG>
void warp_correlation_row(const T* ref, const T* src_cl, const T* proj, const T* consts, const T* depth,
                          i64 C_, i64 G_, i64 H, i64 W, i64 Hs, i64 Ws, i64 D, T* correlation,
                          uint8_t* valid, i64 row, double* ref_vec, double* products, double* dots) {
    const i64 C = CC > 0 ? CC : C_;
    const i64 G = GG > 0 ? GG : G_;
    const i64 cg = C / G;
    const double half = consts[0], min_z = consts[1], max_x = consts[2], max_y = consts[3];
    const double inv_cg = consts[4];
    const i64 b = row / H;
    const i64 i = row - b * H;
    const double py = double(i) + half;
    const T* p = proj + b * 12;
    const double m0 = p[0], m1 = p[1], m2 = p[2], m3 = p[3], m4 = p[4], m5 = p[5];
    const double m6 = p[6], m7 = p[7], m8 = p[8], t0 = p[9], t1 = p[10], t2 = p[11];
    const i64 plane = H * W;
    const T* ref_b = ref + b * C * plane;
    const T* src_b = src_cl + b * Hs * Ws * C;
    const T* depth_b = depth + b * D * plane;
    T* corr_b = correlation + b * G * D * plane;
    uint8_t* valid_b = valid + b * D * plane;
    // dots[(slot * 4 + corner) * G + g]; slot `cur` holds the previous sample's corners
    int cur = 0;
    for (i64 j = 0; j < W; ++j) {
        const double px = double(j) + half;
        const double r0 = (m0 * px + m1 * py) + m2;
        const double r1 = (m3 * px + m4 * py) + m5;
        const double r2 = (m6 * px + m7 * py) + m8;
        const i64 pix = i * W + j;
        for (i64 c = 0; c < C; ++c) ref_vec[c] = ref_b[c * plane + pix];
        i64 k0 = -1, k1 = -1, k2 = -1, k3 = -1;
        for (i64 d = 0; d < D; ++d) {
            const double dep = depth_b[d * plane + pix];
            const double z = r2 * dep + t2;
            T* out = corr_b + d * plane + pix;  // group g at out[g * D * plane]
            if (!(z > min_z)) {
                valid_b[d * plane + pix] = 0;
                for (i64 g = 0; g < G; ++g) out[g * D * plane] = T(0);
                continue;
            }
            const double x = (r0 * dep + t0) / z - half;
            const double y = (r1 * dep + t1) / z - half;
            if (!(x >= 0 && x <= max_x && y >= 0 && y <= max_y)) {
                valid_b[d * plane + pix] = 0;
                for (i64 g = 0; g < G; ++g) out[g * D * plane] = T(0);
                continue;
            }
            valid_b[d * plane + pix] = 1;
            const i64 x0 = i64(std::floor(x));
            const i64 y0 = i64(std::floor(y));
            const double wx = x - double(x0);
            const double wy = y - double(y0);
            const i64 x1 = std::min(x0 + 1, Ws - 1);
            const i64 y1 = std::min(y0 + 1, Hs - 1);
            const double w00 = (1 - wx) * (1 - wy);
            const double w01 = wx * (1 - wy);
            const double w10 = (1 - wx) * wy;
            const double w11 = wx * wy;
            const i64 n0 = y0 * Ws + x0;
            if (n0 == k0) {
                const double* q = dots + cur * 4 * G;
                for (i64 g = 0; g < G; ++g)
                    out[g * D * plane] = T((w00 * q[g] + w01 * q[G + g] + w10 * q[2 * G + g] + w11 * q[3 * G + g]) * inv_cg);
                continue;
            }
            const int nxt = 1 - cur;
            const i64 keys[4] = {n0, y0 * Ws + x1, y1 * Ws + x0, y1 * Ws + x1};
            for (int qn = 0; qn < 4; ++qn) {
                const i64 key = keys[qn];
                int found = -1;
                if (key == k0) found = 0;
                else if (key == k1) found = 1;
                else if (key == k2) found = 2;
                else if (key == k3) found = 3;
                double* dst = dots + (nxt * 4 + qn) * G;
                if (found >= 0) {
                    const double* from = dots + (cur * 4 + found) * G;
                    for (i64 g = 0; g < G; ++g) dst[g] = from[g];
                    continue;
                }
                const T* s = src_b + key * C;
                for (i64 c = 0; c < C; ++c) products[c] = ref_vec[c] * double(s[c]);
                for (i64 g = 0; g < G; ++g) {
                    double acc = 0.0;
                    for (i64 c = g * cg; c < (g + 1) * cg; ++c) acc += products[c];
                    dst[g] = acc;
                }
            }
            const double* q = dots + nxt * 4 * G;
            for (i64 g = 0; g < G; ++g)
                out[g * D * plane] = T((w00 * q[g] + w01 * q[G + g] + w10 * q[2 * G + g] + w11 * q[3 * G + g]) * inv_cg);
            k0 = keys[0];
            k1 = keys[1];
            k2 = keys[2];
            k3 = keys[3];
            cur = nxt;
        }
    }
}

template <typename T, int CC, int GG>
void warp_correlation_rows(const T* ref, const T* src_cl, const T* proj, const T* consts, const T* depth, i64 B,
                           i64 C, i64 G, i64 H, i64 W, i64 Hs, i64 Ws, i64 D, T* correlation, uint8_t* valid,
                           int threads) {
#pragma omp parallel num_threads(threads)
    {
        std::vector<double> scratch(2 * C + 8 * G);
#pragma omp for schedule(static)
        for (i64 row = 0; row < B * H; ++row)
            warp_correlation_row<T, CC, GG>(ref, src_cl, proj, consts, depth, C, G, H, W, Hs, Ws, D, correlation, valid,
                                            row, scratch.data(), scratch.data() + C, scratch.data() + 2 * C);
    }
}

template <typename T>
void warp_correlation(const T* ref, const T* src_cl, const T* proj, const T* consts, const T* depth, i64 B, i64 C,
                      i64 G, i64 H, i64 W, i64 Hs, i64 Ws, i64 D, T* correlation, uint8_t* valid, int threads) {
    // PatchmatchNet's stages (64 / 32 / 16 channels in 8 / 8 / 4 groups) as in the numba module
    if (C == 64 && G == 8)
        warp_correlation_rows<T, 64, 8>(ref, src_cl, proj, consts, depth, B, C, G, H, W, Hs, Ws, D, correlation, valid, threads);
    else if (C == 32 && G == 8)
        warp_correlation_rows<T, 32, 8>(ref, src_cl, proj, consts, depth, B, C, G, H, W, Hs, Ws, D, correlation, valid, threads);
    else if (C == 16 && G == 4)
        warp_correlation_rows<T, 16, 4>(ref, src_cl, proj, consts, depth, B, C, G, H, W, Hs, Ws, D, correlation, valid, threads);
    else
        warp_correlation_rows<T, 0, 0>(ref, src_cl, proj, consts, depth, B, C, G, H, W, Hs, Ws, D, correlation, valid, threads);
}

// ---------------------------------------------------------------------------------------------
// neighbour_correlation and depth_weighted (numba: kernels/adaptive_aggregation/cpu.py)
// ---------------------------------------------------------------------------------------------

// _border_corners: neighbour k of pixel (i, j), its position clamped into the map (NaN -> 0)
template <typename T>
inline void border_corners(const T* offsets, i64 b, i64 K, i64 k, i64 i, i64 j, i64 H, i64 W, i64& x0, i64& y0,
                           i64& x1, i64& y1, double& wx, double& wy) {
    const i64 plane = H * W;
    double sx = double(j) + double(offsets[((b * 2 * K + 2 * k) * plane) + i * W + j]);
    double sy = double(i) + double(offsets[((b * 2 * K + 2 * k + 1) * plane) + i * W + j]);
    sx = sx == sx ? std::min(std::max(sx, 0.0), double(W) - 1.0) : 0.0;
    sy = sy == sy ? std::min(std::max(sy, 0.0), double(H) - 1.0) : 0.0;
    x0 = i64(std::floor(sx));
    y0 = i64(std::floor(sy));
    x1 = std::min(x0 + 1, W - 1);
    y1 = std::min(y0 + 1, H - 1);
    wx = sx - double(x0);
    wy = sy - double(y0);
}

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

// ---------------------------------------------------------------------------------------------
// pointwise_mlp (torch reference: kernels/pointwise_mlp/reference.py)
// ---------------------------------------------------------------------------------------------

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

// Bumped when a signature changes; kernels/_native checks it before binding.
int selfmvs_native_abi() { return 2; }

#define SELFMVS_EXPORTS(T, SUFFIX)                                                                               \
    void warp_correlation_fwd_##SUFFIX(const T* ref, const T* src_cl, const T* proj, const T* consts,            \
                                       const T* depth, i64 B, i64 C, i64 G, i64 H, i64 W, i64 Hs, i64 Ws, i64 D, \
                                       T* correlation, uint8_t* valid, int threads) {                            \
        warp_correlation<T>(ref, src_cl, proj, consts, depth, B, C, G, H, W, Hs, Ws, D, correlation, valid,      \
                            threads);                                                                    \
    }                                                                                                            \
    void neighbour_correlation_fwd_##SUFFIX(const T* feature_cl, const T* offsets, i64 B, i64 H, i64 W, i64 C,  \
                                            i64 K, i64 G, T* out, int threads) {                                 \
        neighbour_correlation<T>(feature_cl, offsets, B, H, W, C, K, G, out, threads);                           \
    }                                                                                                            \
    void depth_weighted_fwd_##SUFFIX(const T* cost, const T* offsets, const T* inverse, const T* feature_weight, \
                                     const T* scale, T eps, i64 B, i64 K, i64 D, i64 H, i64 W, T* out,       \
                                     int threads) {                                                          \
        depth_weighted<T>(cost, offsets, inverse, feature_weight, scale, eps, B, K, D, H, W, out, threads);      \
    }                                                                                                            \
    void pointwise_mlp_fwd_##SUFFIX(const T* x, const T* params, const i64* dims, i64 L, i64 B, i64 N, T* out,   \
                                    int threads) {                                                               \
        pointwise_mlp<T>(x, params, dims, L, B, N, out, threads);                                                \
    }

SELFMVS_EXPORTS(float, f32)
SELFMVS_EXPORTS(double, f64)

}  // extern "C"
