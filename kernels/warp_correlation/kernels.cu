// Fused warp + group-wise correlation in CUDA C (the cuda_c backend; launched by cuda_c.py, rules in
// kernels/_cuda_c). Same operations, in the same order, as cuda.py (numba.cuda) and reference.py:
//
//   pixel centre (px, py) = (j + 0.5, i + 0.5); proj (B, 12) = [M row-major | T];
//   (u, v, z) = ((M_r0 px + M_r1 py) + M_r2) depth + T_r;
//   valid when z > min_z and (x, y) = (u / z - 0.5, v / z - 0.5) lies in [0, Ws - 1] x [0, Hs - 1];
//   taps x0 = floor(x), x1 = min(x0 + 1, Ws - 1) (weight 0 there when x0 = Ws - 1), same for y.
//
// Layouts: ref (B, C, H, W), src (B, C, Hs, Ws), depth (B, D, H, W), correlation (B, G, D, H, W),
// valid (B, D, H, W). Neighbouring threads are neighbouring pixels, so per-channel reads of ref are
// coalesced. Indices are 32-bit (the launch checks every tensor has < 2^31 elements); the one-off
// divides split the thread index, the channel loops step by plane sizes.

struct Sample {
    int x0, y0, x1, y1;
    scalar_t wx, wy;
    bool valid;
};

__device__ __forceinline__ Sample source_sample(const scalar_t* __restrict__ proj, int b, int i, int j, scalar_t dep,
                                                int src_h, int src_w, scalar_t min_z) {
    const scalar_t half = scalar_t(0.5);
    const scalar_t* p = proj + b * 12;
    const scalar_t px = scalar_t(j) + half;
    const scalar_t py = scalar_t(i) + half;
    const scalar_t u = ((p[0] * px + p[1] * py) + p[2]) * dep + p[9];
    const scalar_t v = ((p[3] * px + p[4] * py) + p[5]) * dep + p[10];
    const scalar_t z = ((p[6] * px + p[7] * py) + p[8]) * dep + p[11];
    Sample s;
    s.valid = false;
    s.x0 = s.y0 = s.x1 = s.y1 = 0;
    s.wx = s.wy = scalar_t(0);
    if (!(z > min_z)) return s;  // false for NaN too
    const scalar_t x = u / z - half;
    const scalar_t y = v / z - half;
    if (!(x >= scalar_t(0) && x <= scalar_t(src_w - 1) && y >= scalar_t(0) && y <= scalar_t(src_h - 1))) return s;
    s.x0 = int(x);  // x >= 0: truncation is floor, x - x0 is exact
    s.y0 = int(y);
    s.wx = x - scalar_t(s.x0);
    s.wy = y - scalar_t(s.y0);
    s.x1 = s.x0 + 1 < src_w - 1 ? s.x0 + 1 : src_w - 1;
    s.y1 = s.y0 + 1 < src_h - 1 ? s.y0 + 1 : src_h - 1;
    s.valid = true;
    return s;
}

// A valid sample's 4 bilinear tap weights and their offsets in one (src_h, src_w) plane.
struct Taps {
    scalar_t w00, w01, w10, w11;
    int i00, i01, i10, i11;
};

__device__ __forceinline__ Taps sample_taps(const Sample& s, int src_w) {
    const scalar_t one = scalar_t(1);
    Taps t;
    t.w00 = (one - s.wx) * (one - s.wy);
    t.w01 = s.wx * (one - s.wy);
    t.w10 = (one - s.wx) * s.wy;
    t.w11 = s.wx * s.wy;
    t.i00 = s.y0 * src_w + s.x0;
    t.i01 = s.y0 * src_w + s.x1;
    t.i10 = s.y1 * src_w + s.x0;
    t.i11 = s.y1 * src_w + s.x1;
    return t;
}

// One thread per (b, d, i, j): G correlations and the valid flag.
extern "C" __global__ void warp_correlation_fwd(const scalar_t* __restrict__ ref, const scalar_t* __restrict__ src,
                                                const scalar_t* __restrict__ proj, const scalar_t* __restrict__ depth,
                                                scalar_t* __restrict__ correlation, unsigned char* __restrict__ valid,
                                                int batch, int channels, int height, int width, int src_h, int src_w,
                                                int depths, int groups, scalar_t min_z, scalar_t inv_cg) {
    const int n = blockIdx.x * blockDim.x + threadIdx.x;
    const int plane = height * width;
    if (n >= batch * depths * plane) return;
    const int bd = n / plane;
    const int ij = n - bd * plane;
    const int i = ij / width;
    const int j = ij - i * width;
    const int b = bd / depths;
    const int d = bd - b * depths;
    const Sample s = source_sample(proj, b, i, j, depth[n], src_h, src_w, min_z);
    scalar_t* out = correlation + (b * groups * depths + d) * plane + ij;  // + g * depths * plane
    const int group_stride = depths * plane;
    if (!s.valid) {
        valid[n] = 0;
        for (int g = 0; g < groups; ++g) out[g * group_stride] = scalar_t(0);
        return;
    }
    valid[n] = 1;
    const Taps t = sample_taps(s, src_w);
    const int src_plane = src_h * src_w;
    const scalar_t* r = ref + b * channels * plane + ij;
    const scalar_t* f = src + b * channels * src_plane;
    const int per_group = channels / groups;
    int c = 0;
    for (int g = 0; g < groups; ++g) {
        scalar_t acc = scalar_t(0);
        for (int k = 0; k < per_group; ++k, ++c) {
            const scalar_t* fc = f + c * src_plane;
            const scalar_t sample = t.w00 * fc[t.i00] + t.w01 * fc[t.i01] + t.w10 * fc[t.i10] + t.w11 * fc[t.i11];
            acc += r[c * plane] * sample;
        }
        out[g * group_stride] = acc * inv_cg;
    }
}

// Reference-feature gradient, a gather: one thread per (b, c, i, j), looping over the depths.
extern "C" __global__ void warp_correlation_bwd_ref(const scalar_t* __restrict__ grad_correlation,
                                                    const scalar_t* __restrict__ src, const scalar_t* __restrict__ proj,
                                                    const scalar_t* __restrict__ depth, scalar_t* __restrict__ grad_ref,
                                                    int batch, int channels, int height, int width, int src_h,
                                                    int src_w, int depths, int groups, scalar_t min_z, scalar_t inv_cg) {
    const int n = blockIdx.x * blockDim.x + threadIdx.x;
    const int plane = height * width;
    if (n >= batch * channels * plane) return;
    const int bc = n / plane;
    const int ij = n - bc * plane;
    const int i = ij / width;
    const int j = ij - i * width;
    const int b = bc / channels;
    const int c = bc - b * channels;
    const int g = c / (channels / groups);
    const scalar_t one = scalar_t(1);
    const scalar_t* f = src + bc * src_h * src_w;
    const scalar_t* dep = depth + b * depths * plane + ij;
    const scalar_t* grad = grad_correlation + (b * groups + g) * depths * plane + ij;
    scalar_t acc = scalar_t(0);
    for (int d = 0; d < depths; ++d) {
        const Sample s = source_sample(proj, b, i, j, dep[d * plane], src_h, src_w, min_z);
        if (!s.valid) continue;
        const scalar_t sample = (one - s.wy) * ((one - s.wx) * f[s.y0 * src_w + s.x0] + s.wx * f[s.y0 * src_w + s.x1]) +
                                s.wy * ((one - s.wx) * f[s.y1 * src_w + s.x0] + s.wx * f[s.y1 * src_w + s.x1]);
        acc += grad[d * plane] * sample;
    }
    grad_ref[n] = acc * inv_cg;
}

// Source-feature gradient, a scatter (several pixels and depths sample one source pixel): one thread
// per (b, d, i, j) atomicAdds grad * ref / (C / G) into its 4 taps of grad_src (zeroed by the caller).
extern "C" __global__ void warp_correlation_bwd_src(const scalar_t* __restrict__ grad_correlation,
                                                    const scalar_t* __restrict__ ref, const scalar_t* __restrict__ proj,
                                                    const scalar_t* __restrict__ depth, scalar_t* __restrict__ grad_src,
                                                    int batch, int channels, int height, int width, int src_h,
                                                    int src_w, int depths, int groups, scalar_t min_z, scalar_t inv_cg) {
    const int n = blockIdx.x * blockDim.x + threadIdx.x;
    const int plane = height * width;
    if (n >= batch * depths * plane) return;
    const int bd = n / plane;
    const int ij = n - bd * plane;
    const int i = ij / width;
    const int j = ij - i * width;
    const int b = bd / depths;
    const int d = bd - b * depths;
    const Sample s = source_sample(proj, b, i, j, depth[n], src_h, src_w, min_z);
    if (!s.valid) return;
    const scalar_t zero = scalar_t(0);
    const Taps tap = sample_taps(s, src_w);
    const int src_plane = src_h * src_w;
    const scalar_t* r = ref + b * channels * plane + ij;
    const scalar_t* grad = grad_correlation + (b * groups * depths + d) * plane + ij;
    scalar_t* out = grad_src + b * channels * src_plane;
    const int per_group = channels / groups;
    for (int g = 0; g < groups; ++g) {
        const scalar_t gg = grad[g * depths * plane] * inv_cg;
        if (gg == zero) continue;
        for (int c = g * per_group; c < (g + 1) * per_group; ++c) {
            const scalar_t t = gg * r[c * plane];
            scalar_t* oc = out + c * src_plane;
            atomicAdd(oc + tap.i00, tap.w00 * t);
            if (tap.w01 != zero) atomicAdd(oc + tap.i01, tap.w01 * t);
            if (tap.w10 != zero) atomicAdd(oc + tap.i10, tap.w10 * t);
            if (tap.w11 != zero) atomicAdd(oc + tap.i11, tap.w11 * t);
        }
    }
}

// The deterministic source gradient's first half: per (b, d, i, j), the bilinear weights of its
// sample's 4 taps and their flat indices into a (B * Hs * Ws + 1, C) channels-last gradient (the
// last row is the spare for invalid samples). corner_weight, corner_index: (B, D, H, W, 4).
extern "C" __global__ void warp_correlation_bwd_src_corners(const scalar_t* __restrict__ proj,
                                                            const scalar_t* __restrict__ depth,
                                                            scalar_t* __restrict__ corner_weight,
                                                            long long* __restrict__ corner_index, int batch,
                                                            int height, int width, int src_h, int src_w, int depths,
                                                            scalar_t min_z) {
    const int n = blockIdx.x * blockDim.x + threadIdx.x;
    const int plane = height * width;
    if (n >= batch * depths * plane) return;
    const int bd = n / plane;
    const int ij = n - bd * plane;
    const int i = ij / width;
    const int j = ij - i * width;
    const int b = bd / depths;
    const Sample s = source_sample(proj, b, i, j, depth[n], src_h, src_w, min_z);
    scalar_t* w = corner_weight + 4 * n;
    long long* index = corner_index + 4 * n;
    if (!s.valid) {
        const long long spare = (long long)batch * src_h * src_w;
        for (int k = 0; k < 4; ++k) {
            w[k] = scalar_t(0);
            index[k] = spare;
        }
        return;
    }
    const Taps t = sample_taps(s, src_w);
    const long long plane_start = (long long)b * src_h * src_w;
    w[0] = t.w00;
    index[0] = plane_start + t.i00;
    w[1] = t.w01;
    index[1] = plane_start + t.i01;
    w[2] = t.w10;
    index[2] = plane_start + t.i10;
    w[3] = t.w11;
    index[3] = plane_start + t.i11;
}
