// Inference-only CPU forward of kernels.warp_correlation (numba twin: cpu.py, _fwd_row).
//
// Layouts (C-contiguous, sizes in int64): ref (B, C, H, W), src_cl (B, Hs, Ws, C), proj (B, 12) =
// [M row-major, T], consts [0.5, min z, Ws - 1, Hs - 1, 1 / (C / G)], depth (B, D, H, W)
// -> correlation (B, G, D, H, W), valid (B, D, H, W) as bytes 0 / 1.
// Built into one library with the other ops' native.cpp by kernels/_native/__init__.py (the
// system C++ compiler, -O3 -fopenmp -ffp-contract=off: no fused multiply-adds numba would not use)
// and called through ctypes by native.py next to this file. One OpenMP loop per call over the rows
// (b, i), on the libgomp torch has already loaded, so torch.set_num_threads applies.

#include "../_native/native.hpp"

namespace {

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

}  // namespace

extern "C" {

void warp_correlation_fwd_f32(const float* ref, const float* src_cl, const float* proj, const float* consts, const float* depth,
                              i64 B, i64 C, i64 G, i64 H, i64 W, i64 Hs, i64 Ws, i64 D, float* correlation,
                              uint8_t* valid, int threads) {
    warp_correlation<float>(ref, src_cl, proj, consts, depth, B, C, G, H, W, Hs, Ws, D, correlation, valid, threads);
}

void warp_correlation_fwd_f64(const double* ref, const double* src_cl, const double* proj, const double* consts, const double* depth,
                              i64 B, i64 C, i64 G, i64 H, i64 W, i64 Hs, i64 Ws, i64 D, double* correlation,
                              uint8_t* valid, int threads) {
    warp_correlation<double>(ref, src_cl, proj, consts, depth, B, C, G, H, W, Hs, Ws, D, correlation, valid, threads);
}

}  // extern "C"
