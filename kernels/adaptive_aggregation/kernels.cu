// PatchmatchNet's adaptive spatial cost aggregation (Wang et al., CVPR 2021, Sec. 3.4, eq. 6):
// the CUDA C twin of kernels/adaptive_aggregation/cuda.py (same formulas, same summation order).
//
//   out[b, d, i, j] = sum_k w_k * cost[b, d](j + dx_k, i + dy_k) / (sum_k w_k + eps),
//   w_k = weights[b, k, d, i, j], (dx_k, dy_k) = offsets[b, 2k : 2k + 2, i, j] in pixels,
//   bilinear samples, zeros outside the map.
//
// Layout: cost (B, D, H, W), offsets (B, 2K, H, W), weights (B, K, D, H, W), C-contiguous,
// scalar_t = float or double. Kernels:
//   aa_fwd:             one thread per (b, d, i, j), looping over the K neighbours.
//   aa_bwd_norm:        one thread per (b, d, i, j): gn = grad_out / (sum_k w_k + eps).
//   aa_bwd_offsets:     one thread per (b, k, i, j), looping over the D hypotheses: writes its two
//                       offset gradients (a sum over d) and its D weight gradients. A gather: no
//                       atomics, the same result every run.
//   aa_bwd_cost_atomic: one thread per (b, d, i, j) atomicAdds its K samples' bilinear terms into
//                       grad_cost (zeroed by the caller). The cost gradient is a scatter: learned
//                       offsets can send any pixel's sample anywhere, so no gather can replace it.
//   aa_bwd_cost_terms:  the deterministic alternative: the same terms and their flat indices into
//                       grad_cost (B*D*H*W, a spare slot, for corners outside the map), each
//                       (B, D, H, W, 4K); the caller sums them with index_add_.
// 32-bit indices: the launcher checks that every array (terms included) has < 2^31 elements.

__device__ __forceinline__ float aa_floor(float v) { return floorf(v); }
__device__ __forceinline__ double aa_floor(double v) { return floor(v); }

__device__ __forceinline__ scalar_t aa_lerp(scalar_t a, scalar_t b, scalar_t w) {
  return (scalar_t(1) - w) * a + w * b;
}

// Sample position of neighbour k of pixel (i, j), split into its top-left corner (x0, y0) and
// fractions (wx, wy); false when all four corners lie outside the map (also for NaN).
__device__ __forceinline__ bool aa_position(const scalar_t* __restrict__ offsets, int b, int k, int i, int j,
                                            int height, int width, int neighbours, int* x0, int* y0,
                                            scalar_t* wx, scalar_t* wy) {
  const int plane = height * width;
  const int ox = (b * 2 * neighbours + 2 * k) * plane + i * width + j;
  const scalar_t sx = scalar_t(j) + offsets[ox];
  const scalar_t sy = scalar_t(i) + offsets[ox + plane];
  if (!(sx > scalar_t(-1) && sx < scalar_t(width) && sy > scalar_t(-1) && sy < scalar_t(height))) return false;
  const scalar_t fx = aa_floor(sx);
  const scalar_t fy = aa_floor(sy);
  *wx = sx - fx;
  *wy = sy - fy;
  *x0 = int(fx);
  *y0 = int(fy);
  return true;
}

// The four corners of a sample in one (H, W) cost plane; corners outside the map read zero.
__device__ __forceinline__ void aa_corners(const scalar_t* __restrict__ plane, int height, int width, int x0,
                                           int y0, scalar_t* c00, scalar_t* c01, scalar_t* c10, scalar_t* c11) {
  const int x1 = x0 + 1;
  const int y1 = y0 + 1;
  *c00 = (x0 >= 0 && y0 >= 0) ? plane[y0 * width + x0] : scalar_t(0);
  *c01 = (x1 < width && y0 >= 0) ? plane[y0 * width + x1] : scalar_t(0);
  *c10 = (x0 >= 0 && y1 < height) ? plane[y1 * width + x0] : scalar_t(0);
  *c11 = (x1 < width && y1 < height) ? plane[y1 * width + x1] : scalar_t(0);
}

extern "C" __global__ void aa_fwd(const scalar_t* __restrict__ cost, const scalar_t* __restrict__ offsets,
                                  const scalar_t* __restrict__ weights, scalar_t* __restrict__ out, int batch,
                                  int depth, int height, int width, int neighbours, scalar_t eps) {
  const int idx = blockIdx.x * blockDim.x + threadIdx.x;
  const int plane = height * width;
  if (idx >= batch * depth * plane) return;
  const int pix = idx % plane;
  const int j = pix % width;
  const int i = pix / width;
  const int d = (idx / plane) % depth;
  const int b = idx / (plane * depth);
  const scalar_t* cost_plane = cost + (b * depth + d) * plane;
  scalar_t numerator = scalar_t(0);
  scalar_t denominator = scalar_t(0);
  for (int k = 0; k < neighbours; ++k) {
    const scalar_t weight = weights[((b * neighbours + k) * depth + d) * plane + pix];
    denominator += weight;
    int x0, y0;
    scalar_t wx, wy, c00, c01, c10, c11;
    if (!aa_position(offsets, b, k, i, j, height, width, neighbours, &x0, &y0, &wx, &wy)) continue;
    aa_corners(cost_plane, height, width, x0, y0, &c00, &c01, &c10, &c11);
    numerator += weight * aa_lerp(aa_lerp(c00, c01, wx), aa_lerp(c10, c11, wx), wy);
  }
  out[idx] = numerator / (denominator + eps);
}

extern "C" __global__ void aa_bwd_norm(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ weights,
                                       scalar_t* __restrict__ grad_norm, int batch, int depth, int height,
                                       int width, int neighbours, scalar_t eps) {
  const int idx = blockIdx.x * blockDim.x + threadIdx.x;
  const int plane = height * width;
  if (idx >= batch * depth * plane) return;
  const int pix = idx % plane;
  const int d = (idx / plane) % depth;
  const int b = idx / (plane * depth);
  scalar_t denominator = eps;
  for (int k = 0; k < neighbours; ++k) denominator += weights[((b * neighbours + k) * depth + d) * plane + pix];
  grad_norm[idx] = grad_out[idx] / denominator;
}

// d out / d w_k = gn (sample_k - out); d out / d (dx_k, dy_k) = gn w_k (bilinear slopes).
extern "C" __global__ void aa_bwd_offsets(const scalar_t* __restrict__ grad_norm, const scalar_t* __restrict__ out,
                                          const scalar_t* __restrict__ cost, const scalar_t* __restrict__ offsets,
                                          const scalar_t* __restrict__ weights, scalar_t* __restrict__ grad_offsets,
                                          scalar_t* __restrict__ grad_weights, int batch, int depth, int height,
                                          int width, int neighbours) {
  const int idx = blockIdx.x * blockDim.x + threadIdx.x;
  const int plane = height * width;
  if (idx >= batch * neighbours * plane) return;
  const int pix = idx % plane;
  const int j = pix % width;
  const int i = pix / width;
  const int k = (idx / plane) % neighbours;
  const int b = idx / (plane * neighbours);
  int x0 = 0, y0 = 0;
  scalar_t wx = scalar_t(0), wy = scalar_t(0);
  const bool inside = aa_position(offsets, b, k, i, j, height, width, neighbours, &x0, &y0, &wx, &wy);
  scalar_t grad_x = scalar_t(0);
  scalar_t grad_y = scalar_t(0);
  for (int d = 0; d < depth; ++d) {
    const int cell = (b * depth + d) * plane + pix;
    const int wcell = ((b * neighbours + k) * depth + d) * plane + pix;
    const scalar_t g = grad_norm[cell];
    if (!inside) {
      grad_weights[wcell] = g * (scalar_t(0) - out[cell]);
      continue;
    }
    scalar_t c00, c01, c10, c11;
    aa_corners(cost + (b * depth + d) * plane, height, width, x0, y0, &c00, &c01, &c10, &c11);
    const scalar_t sample = aa_lerp(aa_lerp(c00, c01, wx), aa_lerp(c10, c11, wx), wy);
    grad_weights[wcell] = g * (sample - out[cell]);
    const scalar_t a = g * weights[wcell];
    grad_x += a * aa_lerp(c01 - c00, c11 - c10, wy);
    grad_y += a * aa_lerp(c10 - c00, c11 - c01, wx);
  }
  const int ox = (b * 2 * neighbours + 2 * k) * plane + pix;
  grad_offsets[ox] = grad_x;
  grad_offsets[ox + plane] = grad_y;
}

extern "C" __global__ void aa_bwd_cost_atomic(const scalar_t* __restrict__ grad_norm,
                                              const scalar_t* __restrict__ offsets,
                                              const scalar_t* __restrict__ weights, scalar_t* grad_cost, int batch,
                                              int depth, int height, int width, int neighbours) {
  const int idx = blockIdx.x * blockDim.x + threadIdx.x;
  const int plane = height * width;
  if (idx >= batch * depth * plane) return;
  const int pix = idx % plane;
  const int j = pix % width;
  const int i = pix / width;
  const int d = (idx / plane) % depth;
  const int b = idx / (plane * depth);
  const scalar_t g = grad_norm[idx];
  scalar_t* target = grad_cost + (b * depth + d) * plane;
  for (int k = 0; k < neighbours; ++k) {
    int x0, y0;
    scalar_t wx, wy;
    if (!aa_position(offsets, b, k, i, j, height, width, neighbours, &x0, &y0, &wx, &wy)) continue;
    const scalar_t a = g * weights[((b * neighbours + k) * depth + d) * plane + pix];
    const scalar_t ux = scalar_t(1) - wx;
    const scalar_t uy = scalar_t(1) - wy;
    const int x1 = x0 + 1;
    const int y1 = y0 + 1;
    if (x0 >= 0 && y0 >= 0) atomicAdd(target + y0 * width + x0, ux * uy * a);
    if (x1 < width && y0 >= 0) atomicAdd(target + y0 * width + x1, wx * uy * a);
    if (x0 >= 0 && y1 < height) atomicAdd(target + y1 * width + x0, ux * wy * a);
    if (x1 < width && y1 < height) atomicAdd(target + y1 * width + x1, wx * wy * a);
  }
}

extern "C" __global__ void aa_bwd_cost_terms(const scalar_t* __restrict__ grad_norm,
                                             const scalar_t* __restrict__ offsets,
                                             const scalar_t* __restrict__ weights, scalar_t* __restrict__ terms,
                                             int* __restrict__ index, int batch, int depth, int height, int width,
                                             int neighbours) {
  const int idx = blockIdx.x * blockDim.x + threadIdx.x;
  const int plane = height * width;
  const int total = batch * depth * plane;
  if (idx >= total) return;
  const int pix = idx % plane;
  const int j = pix % width;
  const int i = pix / width;
  const int d = (idx / plane) % depth;
  const int b = idx / (plane * depth);
  const scalar_t g = grad_norm[idx];
  const int base = (b * depth + d) * plane;
  scalar_t* my_terms = terms + idx * 4 * neighbours;
  int* my_index = index + idx * 4 * neighbours;
  for (int k = 0; k < neighbours; ++k) {
    for (int corner = 0; corner < 4; ++corner) {
      my_terms[4 * k + corner] = scalar_t(0);
      my_index[4 * k + corner] = total;  // the spare slot
    }
    int x0, y0;
    scalar_t wx, wy;
    if (!aa_position(offsets, b, k, i, j, height, width, neighbours, &x0, &y0, &wx, &wy)) continue;
    const scalar_t a = g * weights[((b * neighbours + k) * depth + d) * plane + pix];
    const scalar_t ux = scalar_t(1) - wx;
    const scalar_t uy = scalar_t(1) - wy;
    const int x1 = x0 + 1;
    const int y1 = y0 + 1;
    if (x0 >= 0 && y0 >= 0) {
      my_terms[4 * k] = ux * uy * a;
      my_index[4 * k] = base + y0 * width + x0;
    }
    if (x1 < width && y0 >= 0) {
      my_terms[4 * k + 1] = wx * uy * a;
      my_index[4 * k + 1] = base + y0 * width + x1;
    }
    if (x0 >= 0 && y1 < height) {
      my_terms[4 * k + 2] = ux * wy * a;
      my_index[4 * k + 2] = base + y1 * width + x0;
    }
    if (x1 < width && y1 < height) {
      my_terms[4 * k + 3] = wx * wy * a;
      my_index[4 * k + 3] = base + y1 * width + x1;
    }
  }
}
