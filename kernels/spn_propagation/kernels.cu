// 8-neighbour spatial propagation (SPN, Liu et al. NIPS 2017; CSPN's form, Cheng et al. ECCV 2018,
// eq. 1): the CUDA C twin of kernels/spn_propagation/cuda.py. Neighbour k is the 3x3 ring in
// row-major order without the centre (reference.NEIGHBOUR_OFFSETS); zero-affinity border.
//
// Layout: depth-like maps (B, H, W) and affinity (B, 8, H, W), C-contiguous, scalar_t = float
// or double.
// One thread per pixel, one launch per step (step t + 1 reads step t's neighbours). No shared
// memory, no atomics: the backward is the gather of the package docstring (pixel r writes only
// its own G_t and its own eight affinity gradients). 32-bit indices: the launcher checks
// B*8*H*W < 2^31.

__device__ __forceinline__ int spn_neighbour_row(int k) { return (k >= 4 ? k + 1 : k) / 3 - 1; }
__device__ __forceinline__ int spn_neighbour_col(int k) { return (k >= 4 ? k + 1 : k) % 3 - 1; }

// dst(p) = src(p) + sum_{k inside} a_k(p) (src(p + n_k) - src(p)).
extern "C" __global__ void spn_fwd_step(const scalar_t* __restrict__ src, const scalar_t* __restrict__ affinity,
                                        scalar_t* __restrict__ dst, int batch, int height, int width) {
  const int idx = blockIdx.x * blockDim.x + threadIdx.x;
  const int plane = height * width;
  if (idx >= batch * plane) return;
  const int j = idx % width;
  const int i = (idx / width) % height;
  const int b = idx / plane;
  const scalar_t* src_b = src + b * plane;
  const scalar_t* aff_b = affinity + b * 8 * plane;
  const scalar_t centre = src_b[i * width + j];
  scalar_t acc = scalar_t(0);
  for (int k = 0; k < 8; ++k) {
    const int qi = i + spn_neighbour_row(k);
    const int qj = j + spn_neighbour_col(k);
    if (qi >= 0 && qi < height && qj >= 0 && qj < width)
      acc += aff_b[k * plane + i * width + j] * (src_b[qi * width + qj] - centre);
  }
  dst[idx] = centre + acc;
}

// One step back: G_t(r) and dL/da_k(r) += G_{t+1}(r) (d_t(r + n_k) - d_t(r)).
extern "C" __global__ void spn_bwd_step(const scalar_t* __restrict__ state, const scalar_t* __restrict__ affinity,
                                        const scalar_t* __restrict__ grad_next, scalar_t* __restrict__ grad_prev,
                                        scalar_t* __restrict__ grad_affinity, int batch, int height, int width) {
  const int idx = blockIdx.x * blockDim.x + threadIdx.x;
  const int plane = height * width;
  if (idx >= batch * plane) return;
  const int j = idx % width;
  const int i = (idx / width) % height;
  const int b = idx / plane;
  const scalar_t* state_b = state + b * plane;
  const scalar_t* grad_b = grad_next + b * plane;
  const scalar_t* aff_b = affinity + b * 8 * plane;
  scalar_t* grad_aff_b = grad_affinity + b * 8 * plane;
  const scalar_t g = grad_b[i * width + j];
  const scalar_t centre = state_b[i * width + j];
  scalar_t acc = g;
  for (int k = 0; k < 8; ++k) {
    const int di = spn_neighbour_row(k);
    const int dj = spn_neighbour_col(k);
    const int qi = i + di;
    const int qj = j + dj;
    if (qi >= 0 && qi < height && qj >= 0 && qj < width) {
      grad_aff_b[k * plane + i * width + j] += g * (state_b[qi * width + qj] - centre);
      acc -= aff_b[k * plane + i * width + j] * g;
    }
    const int pi = i - di;
    const int pj = j - dj;
    if (pi >= 0 && pi < height && pj >= 0 && pj < width)
      acc += aff_b[k * plane + pi * width + pj] * grad_b[pi * width + pj];
  }
  grad_prev[idx] = acc;
}
