/* The CPU kernels for double, AVX2 + FMA (selected where the CPU has both): see kernels_body.h. */
#define REAL double
#define VECTOR_BYTES 32
#define TARGET __attribute__((target("avx2,fma")))
#define TABLE cnn_xp_kernels_double_avx2
#include "kernels_body.h"
