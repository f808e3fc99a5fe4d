/* The CPU kernels for float, baseline x86-64 (SSE2; every x86-64 CPU): see kernels_body.h. */
#define REAL float
#define VECTOR_BYTES 16
#define TARGET
#define TABLE cnn_xp_kernels_float_baseline
#include "kernels_body.h"
