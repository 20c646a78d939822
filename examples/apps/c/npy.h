// A reader for NumPy .npy files of little-endian float32 in C order (format
// versions 1-3), enough for images written by np.save(path, x.astype(np.float32)).
#ifndef OPTC_APPS_NPY_H_
#define OPTC_APPS_NPY_H_

#include <stddef.h>

#define NPY_MAX_RANK 8

typedef struct npy_f32_t {
  int rank;
  long shape[NPY_MAX_RANK];
  size_t count;  // number of elements
  float* data;   // malloc'ed; free with npy_f32_free
} npy_f32_t;

// Reads |path| into |out|. On failure returns 0 and writes one line (no newline)
// saying why into |error|.
int npy_f32_read(const char* path, npy_f32_t* out, char* error, size_t error_size);
void npy_f32_free(npy_f32_t* array);

#endif  // OPTC_APPS_NPY_H_
