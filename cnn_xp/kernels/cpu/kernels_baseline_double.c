/* The CPU kernels for double, baseline x86-64 (SSE2; every x86-64 CPU): see kernels_body.h. */
#define REAL double
#define VECTOR_BYTES 16
#define TARGET
#define TABLE cnn_xp_kernels_double_baseline
#include "kernels_body.h"
