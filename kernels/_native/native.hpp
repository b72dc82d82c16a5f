// Shared by the native.cpp files of kernels/<op>/: types and the border-clamped bilinear corners
// (the twin of kernels/_bilinear_cpu.py's border_corners).
//
// The C++ forwards let `selfmvs infer` run without numba's JIT in the process (~120 MB of
// resident memory: numba's typing and target contexts and LLVM). Each mirrors the numba kernel of
// its op line for line, including where numba computes in float64 (sample positions, corner dot
// products) and where in the inputs' dtype, so the two CPU paths agree to rounding.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

typedef int64_t i64;

namespace selfmvs_native {

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

}  // namespace selfmvs_native
