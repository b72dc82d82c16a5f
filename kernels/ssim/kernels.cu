// Per-pixel SSIM with a 3x3 box window (Wang et al. 2004, eq. 13), C1 = 0.01^2, C2 = 0.03^2:
// the CUDA C twin of kernels/ssim/cuda.py, same arithmetic order as kernels/ssim/_formulas.py.
//
// Layout: x, y (N, H, W) C-contiguous, N = B*C, scalar_t = float or double; the map is (N, Ho, Wo) with Ho, Wo = H, W
// (reflect: padding by one, input index -1 reads 1 and n reads n - 2) or H - 2, W - 2 (valid).
// No shared memory, no atomics: the backward is two gathers, every output written by one thread.
//   ssim_fwd:        one thread per map pixel.
//   ssim_bwd_coef:   one thread per map pixel p: g_p * (a_x, a_y, b, c) of its window, four
//                    planes of (N, Ho, Wo) (dS/dx_q = a_x + b x_q + c y_q for each tap q).
//   ssim_bwd_gather: one thread per input pixel q: sums the coefficient planes over the windows
//                    that read q, each weighted by how many of its taps read q (tap count).
// 32-bit indices: the launcher checks N*H*W < 2^31.

__device__ __forceinline__ void ssim_and_coefficients(scalar_t sx, scalar_t sy, scalar_t sxx, scalar_t syy,
                                                      scalar_t sxy, scalar_t* s_out, scalar_t* a_x, scalar_t* a_y,
                                                      scalar_t* b, scalar_t* c) {
  const scalar_t inv_n = scalar_t(1.0) / scalar_t(9.0);
  const scalar_t c1 = scalar_t(0.01 * 0.01);
  const scalar_t c2 = scalar_t(0.03 * 0.03);
  const scalar_t two = scalar_t(2.0);
  const scalar_t mx = sx * inv_n;
  const scalar_t my = sy * inv_n;
  const scalar_t var_x = sxx * inv_n - mx * mx;
  const scalar_t var_y = syy * inv_n - my * my;
  const scalar_t cov = sxy * inv_n - mx * my;
  const scalar_t num_l = two * mx * my + c1;
  const scalar_t num_cs = two * cov + c2;
  const scalar_t den_l = mx * mx + my * my + c1;
  const scalar_t den_cs = var_x + var_y + c2;
  const scalar_t den = den_l * den_cs;
  const scalar_t s = num_l * num_cs / den;
  const scalar_t d_num_l = num_cs / den;
  const scalar_t d_num_cs = num_l / den;
  const scalar_t d_den_l = -s / den_l;
  const scalar_t d_den_cs = -s / den_cs;
  const scalar_t d_mx = two * (my * d_num_l + mx * d_den_l);
  const scalar_t d_my = two * (mx * d_num_l + my * d_den_l);
  const scalar_t d_cov = two * d_num_cs;
  *s_out = s;
  *a_x = (d_mx - two * mx * d_den_cs - my * d_cov) * inv_n;
  *a_y = (d_my - two * my * d_den_cs - mx * d_cov) * inv_n;
  *b = two * d_den_cs * inv_n;
  *c = d_cov * inv_n;
}

// Input index of padded position r (-1 <= r <= n) under reflection padding by one.
__device__ __forceinline__ int ssim_reflect(int r, int n) {
  if (r < 0) return -r;
  if (r >= n) return 2 * (n - 1) - r;
  return r;
}

// How many taps of map position p's window read input position q along one axis of size n.
__device__ __forceinline__ int ssim_tap_count(int q, int p, int n, int valid) {
  const int d = q - p;
  if (valid) return (d >= 0 && d <= 2) ? 1 : 0;
  int count = (d >= -1 && d <= 1) ? 1 : 0;
  if (q == 1 && p == 0) count += 1;
  if (q == n - 2 && p == n - 1) count += 1;
  return count;
}

// SSIM and gradient coefficients of the window of map pixel (i, j) of image plane xs, ys.
__device__ __forceinline__ void ssim_window(const scalar_t* xs, const scalar_t* ys, int height, int width, int i,
                                            int j, int valid, scalar_t* s, scalar_t* a_x, scalar_t* a_y, scalar_t* b,
                                            scalar_t* c) {
  scalar_t sx = scalar_t(0), sy = scalar_t(0), sxx = scalar_t(0), syy = scalar_t(0), sxy = scalar_t(0);
  for (int dr = 0; dr < 3; ++dr) {
    const int r = valid ? i + dr : ssim_reflect(i + dr - 1, height);
    for (int dc = 0; dc < 3; ++dc) {
      const int col = valid ? j + dc : ssim_reflect(j + dc - 1, width);
      const scalar_t a = xs[r * width + col];
      const scalar_t v = ys[r * width + col];
      sx += a;
      sy += v;
      sxx += a * a;
      syy += v * v;
      sxy += a * v;
    }
  }
  ssim_and_coefficients(sx, sy, sxx, syy, sxy, s, a_x, a_y, b, c);
}

extern "C" __global__ void ssim_fwd(const scalar_t* __restrict__ x, const scalar_t* __restrict__ y,
                                    scalar_t* __restrict__ out, int n_img, int height, int width, int valid) {
  const int out_h = valid ? height - 2 : height;
  const int out_w = valid ? width - 2 : width;
  const int idx = blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= n_img * out_h * out_w) return;
  const int j = idx % out_w;
  const int i = (idx / out_w) % out_h;
  const int n = idx / (out_w * out_h);
  const int plane = n * height * width;
  scalar_t s, a_x, a_y, b, c;
  ssim_window(x + plane, y + plane, height, width, i, j, valid, &s, &a_x, &a_y, &b, &c);
  out[idx] = s;
}

extern "C" __global__ void ssim_bwd_coef(const scalar_t* __restrict__ x, const scalar_t* __restrict__ y,
                                         const scalar_t* __restrict__ grad_out, scalar_t* __restrict__ coef,
                                         int n_img, int height, int width, int valid) {
  const int out_h = valid ? height - 2 : height;
  const int out_w = valid ? width - 2 : width;
  const int total = n_img * out_h * out_w;
  const int idx = blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= total) return;
  const int j = idx % out_w;
  const int i = (idx / out_w) % out_h;
  const int n = idx / (out_w * out_h);
  const int plane = n * height * width;
  scalar_t s, a_x, a_y, b, c;
  ssim_window(x + plane, y + plane, height, width, i, j, valid, &s, &a_x, &a_y, &b, &c);
  const scalar_t g = grad_out[idx];
  coef[idx] = g * a_x;
  coef[total + idx] = g * a_y;
  coef[2 * total + idx] = g * b;
  coef[3 * total + idx] = g * c;
}

extern "C" __global__ void ssim_bwd_gather(const scalar_t* __restrict__ x, const scalar_t* __restrict__ y,
                                           const scalar_t* __restrict__ coef, scalar_t* __restrict__ grad_x,
                                           scalar_t* __restrict__ grad_y, int n_img, int height, int width,
                                           int valid) {
  const int out_h = valid ? height - 2 : height;
  const int out_w = valid ? width - 2 : width;
  const int total = n_img * out_h * out_w;
  const int idx = blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= n_img * height * width) return;
  const int q_col = idx % width;
  const int q_row = (idx / width) % height;
  const int n = idx / (width * height);
  const int row_lo = q_row - 2 > 0 ? q_row - 2 : 0;
  const int row_hi = q_row + 2 < out_h - 1 ? q_row + 2 : out_h - 1;
  const int col_lo = q_col - 2 > 0 ? q_col - 2 : 0;
  const int col_hi = q_col + 2 < out_w - 1 ? q_col + 2 : out_w - 1;
  scalar_t s_ax = scalar_t(0), s_ay = scalar_t(0), s_b = scalar_t(0), s_c = scalar_t(0);
  for (int pr = row_lo; pr <= row_hi; ++pr) {
    const int wr = ssim_tap_count(q_row, pr, height, valid);
    if (wr == 0) continue;
    for (int pc = col_lo; pc <= col_hi; ++pc) {
      const int wc = ssim_tap_count(q_col, pc, width, valid);
      if (wc == 0) continue;
      const scalar_t w = scalar_t(wr * wc);
      const int p = (n * out_h + pr) * out_w + pc;
      s_ax += w * coef[p];
      s_ay += w * coef[total + p];
      s_b += w * coef[2 * total + p];
      s_c += w * coef[3 * total + p];
    }
  }
  const scalar_t a = x[idx];
  const scalar_t v = y[idx];
  grad_x[idx] = s_ax + s_b * a + s_c * v;
  grad_y[idx] = s_ay + s_b * v + s_c * a;
}
