// warp_image in CUDA C (the cuda_c backend; launched by cuda_c.py, rules in kernels/_cuda_c).
//
// One thread per reference pixel (b, i, j). The projection and the validity rule are those of
// _formulas.py, operation for operation: pixel centre (u, v) = (j + 0.5, i + 0.5),
// r = M [u, v, 1], h = z r + k with proj = [M | k] (B, 3, 4); valid when h_z > min_depth and the
// sample centre (h_x / h_z - 0.5, h_y / h_z - 0.5) lies in [0, Ws - 1] x [0, Hs - 1]; the left/top
// tap is clamped to Ws - 2 (Hs - 2) so the last pixel centre interpolates with weight 1 on it.
// Indices are 32-bit (the launch checks every tensor has < 2^31 elements); no divide per channel.

struct WarpSample {
    scalar_t rx, ry, rz, hx, hy, hz;  // r = dh/dz, h: homogeneous source pixel
    int x0, y0, x1, y1;               // taps
    scalar_t ax, ay;                  // bilinear weights of the right/bottom taps
    bool valid;
};

__device__ __forceinline__ WarpSample project_and_setup(const scalar_t* __restrict__ proj, int b, int i, int j,
                                                        scalar_t z, int src_h, int src_w, scalar_t min_depth) {
    const scalar_t half = scalar_t(0.5);
    const scalar_t* p = proj + b * 12;
    const scalar_t u = scalar_t(j) + half;
    const scalar_t v = scalar_t(i) + half;
    WarpSample s;
    s.rx = p[0] * u + p[1] * v + p[2];
    s.ry = p[4] * u + p[5] * v + p[6];
    s.rz = p[8] * u + p[9] * v + p[10];
    s.hx = z * s.rx + p[3];
    s.hy = z * s.ry + p[7];
    s.hz = z * s.rz + p[11];
    s.valid = false;
    s.x0 = s.y0 = s.x1 = s.y1 = 0;
    s.ax = s.ay = scalar_t(0);
    if (!(s.hz > min_depth)) return s;  // also false for NaN
    const scalar_t fx = s.hx / s.hz - half;
    const scalar_t fy = s.hy / s.hz - half;
    if (!(fx >= scalar_t(0) && fx <= scalar_t(src_w - 1) && fy >= scalar_t(0) && fy <= scalar_t(src_h - 1))) return s;
    // fx, fy >= 0: truncation is floor, and fx - x0 is exact.
    s.x0 = int(fx);
    s.y0 = int(fy);
    s.ax = fx - scalar_t(s.x0);
    s.ay = fy - scalar_t(s.y0);
    if (s.x0 > src_w - 2 && src_w >= 2) {
        s.x0 = src_w - 2;
        s.ax = scalar_t(1);
    }
    if (s.y0 > src_h - 2 && src_h >= 2) {
        s.y0 = src_h - 2;
        s.ay = scalar_t(1);
    }
    s.x1 = s.x0 + 1 < src_w - 1 ? s.x0 + 1 : src_w - 1;
    s.y1 = s.y0 + 1 < src_h - 1 ? s.y0 + 1 : src_h - 1;
    s.valid = true;
    return s;
}

// out (B, C, H, W), valid (B, 1, H, W) as 0/1.
extern "C" __global__ void warp_image_fwd(const scalar_t* __restrict__ src, const scalar_t* __restrict__ depth,
                                          const scalar_t* __restrict__ proj, scalar_t* __restrict__ out,
                                          unsigned char* __restrict__ valid, int batch, int channels, int src_h,
                                          int src_w, int height, int width, scalar_t min_depth) {
    const int n = blockIdx.x * blockDim.x + threadIdx.x;
    const int plane = height * width;
    if (n >= batch * plane) return;
    const int b = n / plane;
    const int ij = n - b * plane;
    const int i = ij / width;
    const int j = ij - i * width;
    const WarpSample s = project_and_setup(proj, b, i, j, depth[n], src_h, src_w, min_depth);
    scalar_t* o = out + b * channels * plane + ij;
    if (!s.valid) {
        valid[n] = 0;
        for (int c = 0; c < channels; ++c) o[c * plane] = scalar_t(0);
        return;
    }
    valid[n] = 1;
    const scalar_t bx = scalar_t(1) - s.ax;
    const scalar_t by = scalar_t(1) - s.ay;
    const int src_plane = src_h * src_w;
    const scalar_t* row0 = src + b * channels * src_plane + s.y0 * src_w;
    const scalar_t* row1 = src + b * channels * src_plane + s.y1 * src_w;
    for (int c = 0; c < channels; ++c) {
        const int offset = c * src_plane;
        o[c * plane] = by * (bx * row0[offset + s.x0] + s.ax * row0[offset + s.x1]) +
                       s.ay * (bx * row1[offset + s.x0] + s.ax * row1[offset + s.x1]);
    }
}

// grad_depth (B, 1, H, W) is written for every pixel; when accumulate_src != 0 the image gradient
// is scattered into grad_src (B, C, Hs, Ws, zeroed by the caller) with atomicAdd (several reference
// pixels can sample one source pixel).
extern "C" __global__ void warp_image_bwd(const scalar_t* __restrict__ src, const scalar_t* __restrict__ depth,
                                          const scalar_t* __restrict__ proj, const scalar_t* __restrict__ grad_out,
                                          scalar_t* __restrict__ grad_src, scalar_t* __restrict__ grad_depth,
                                          int accumulate_src, int batch, int channels, int src_h, int src_w,
                                          int height, int width, scalar_t min_depth) {
    const int n = blockIdx.x * blockDim.x + threadIdx.x;
    const int plane = height * width;
    if (n >= batch * plane) return;
    const int b = n / plane;
    const int ij = n - b * plane;
    const int i = ij / width;
    const int j = ij - i * width;
    const WarpSample s = project_and_setup(proj, b, i, j, depth[n], src_h, src_w, min_depth);
    if (!s.valid) {
        grad_depth[n] = scalar_t(0);
        return;
    }
    const scalar_t bx = scalar_t(1) - s.ax;
    const scalar_t by = scalar_t(1) - s.ay;
    const int src_plane = src_h * src_w;
    const int i00 = s.y0 * src_w + s.x0, i01 = s.y0 * src_w + s.x1;
    const int i10 = s.y1 * src_w + s.x0, i11 = s.y1 * src_w + s.x1;
    const scalar_t* image = src + b * channels * src_plane;
    scalar_t* grad_image = grad_src + b * channels * src_plane;
    const scalar_t* g_out = grad_out + b * channels * plane + ij;
    scalar_t g_fx = scalar_t(0), g_fy = scalar_t(0);
    for (int c = 0; c < channels; ++c) {
        const scalar_t g = g_out[c * plane];
        const int offset = c * src_plane;
        if (accumulate_src) {
            atomicAdd(grad_image + offset + i00, g * by * bx);
            atomicAdd(grad_image + offset + i01, g * by * s.ax);
            atomicAdd(grad_image + offset + i10, g * s.ay * bx);
            atomicAdd(grad_image + offset + i11, g * s.ay * s.ax);
        }
        const scalar_t v00 = image[offset + i00], v01 = image[offset + i01];
        const scalar_t v10 = image[offset + i10], v11 = image[offset + i11];
        g_fx += g * (by * (v01 - v00) + s.ay * (v11 - v10));
        g_fy += g * (bx * (v10 - v00) + s.ax * (v11 - v01));
    }
    // d(h_x / h_z)/dz = (r_x h_z - h_x r_z) / h_z^2
    const scalar_t inv_hz2 = scalar_t(1) / (s.hz * s.hz);
    grad_depth[n] = g_fx * (s.rx * s.hz - s.hx * s.rz) * inv_hz2 + g_fy * (s.ry * s.hz - s.hy * s.rz) * inv_hz2;
}

// The deterministic image gradient's first half: per reference pixel, the bilinear weights of its
// sample's 4 taps and their flat indices into a (B * Hs * Ws + 1, C) channels-last gradient (the
// last row is the spare for invalid pixels). corner_weight, corner_index: (B, H, W, 4).
extern "C" __global__ void warp_image_bwd_src_corners(const scalar_t* __restrict__ depth,
                                                      const scalar_t* __restrict__ proj,
                                                      scalar_t* __restrict__ corner_weight,
                                                      long long* __restrict__ corner_index, int batch, int src_h,
                                                      int src_w, int height, int width, scalar_t min_depth) {
    const int n = blockIdx.x * blockDim.x + threadIdx.x;
    const int plane = height * width;
    if (n >= batch * plane) return;
    const int b = n / plane;
    const int ij = n - b * plane;
    const int i = ij / width;
    const int j = ij - i * width;
    const WarpSample s = project_and_setup(proj, b, i, j, depth[n], src_h, src_w, min_depth);
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
    const scalar_t bx = scalar_t(1) - s.ax;
    const scalar_t by = scalar_t(1) - s.ay;
    const long long row0 = ((long long)b * src_h + s.y0) * src_w;
    const long long row1 = ((long long)b * src_h + s.y1) * src_w;
    w[0] = by * bx;
    index[0] = row0 + s.x0;
    w[1] = by * s.ax;
    index[1] = row0 + s.x1;
    w[2] = s.ay * bx;
    index[2] = row1 + s.x0;
    w[3] = s.ay * s.ax;
    index[3] = row1 + s.x1;
}
