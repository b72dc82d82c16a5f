// The ABI version of the library built from kernels/*/native.cpp; kernels/_native/__init__.py
// checks it before binding. Bumped when an exported signature changes.
#include "native.hpp"

extern "C" int selfmvs_native_abi() { return 2; }
