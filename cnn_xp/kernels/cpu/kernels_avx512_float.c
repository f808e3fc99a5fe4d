/* The CPU kernels for float, AVX-512 F/DQ/BW/VL + AVX2 + FMA (selected where the CPU has them all): see kernels_body.h. */
#define REAL float
#define VECTOR_BYTES 64
#define TARGET __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma")))
#define TABLE cnn_xp_kernels_float_avx512
#include "kernels_body.h"
