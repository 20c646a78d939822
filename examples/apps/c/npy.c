// .npy layout: "\x93NUMPY", major, minor, header length (2 bytes in v1, 4 in v2/v3,
// little-endian), then a Python dict literal such as
//   {'descr': '<f4', 'fortran_order': False, 'shape': (360, 8, 8), }
// padded with spaces and a newline, then the raw data.
#include "npy.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// The text after "'key':" in the header, or NULL.
static const char* header_value(const char* header, const char* key) {
  char quoted[32];
  snprintf(quoted, sizeof(quoted), "'%s'", key);
  const char* at = strstr(header, quoted);
  if (!at) return NULL;
  at = strchr(at + strlen(quoted), ':');
  if (!at) return NULL;
  for (++at; *at == ' '; ++at) {
  }
  return at;
}

static int fail(char* error, size_t error_size, const char* path, const char* why) {
  snprintf(error, error_size, "%s: %s", path, why);
  return 0;
}

int npy_f32_read(const char* path, npy_f32_t* out, char* error, size_t error_size) {
  memset(out, 0, sizeof(*out));
  FILE* f = fopen(path, "rb");
  if (!f) return fail(error, error_size, path, "cannot open the file");
  unsigned char magic[10];
  int ok = 0;
  char* header = NULL;
  if (fread(magic, 1, 8, f) != 8 || memcmp(magic, "\x93NUMPY", 6) != 0) {
    fail(error, error_size, path, "not a .npy file");
    goto done;
  }
  size_t header_len = 0;
  if (magic[6] == 1) {
    if (fread(magic, 1, 2, f) != 2) goto truncated;
    header_len = magic[0] | (magic[1] << 8);
  } else if (magic[6] == 2 || magic[6] == 3) {
    if (fread(magic, 1, 4, f) != 4) goto truncated;
    header_len = magic[0] | (magic[1] << 8) | ((size_t)magic[2] << 16) | ((size_t)magic[3] << 24);
  } else {
    fail(error, error_size, path, "unsupported .npy format version");
    goto done;
  }
  if (header_len > (1u << 20)) {
    fail(error, error_size, path, "not a .npy file (implausible header)");
    goto done;
  }
  header = calloc(header_len + 1, 1);
  if (!header || fread(header, 1, header_len, f) != header_len) goto truncated;

  const char* descr = header_value(header, "descr");
  if (!descr || strncmp(descr, "'<f4'", 5) != 0) {
    fail(error, error_size, path, "the images must be float32 (np.save(path, x.astype(np.float32)))");
    goto done;
  }
  const char* order = header_value(header, "fortran_order");
  if (!order || strncmp(order, "False", 5) != 0) {
    fail(error, error_size, path, "the array must be in C order");
    goto done;
  }
  const char* shape = header_value(header, "shape");
  if (!shape || *shape != '(') {
    fail(error, error_size, path, "not a .npy file (no shape in its header)");
    goto done;
  }
  out->count = 1;
  for (const char* p = shape + 1; *p && *p != ')';) {
    if (isspace((unsigned char)*p) || *p == ',') {
      ++p;
      continue;
    }
    char* end = NULL;
    long dim = strtol(p, &end, 10);
    if (end == p || dim < 0 || out->rank == NPY_MAX_RANK) {
      fail(error, error_size, path, "not a .npy file (bad shape in its header)");
      goto done;
    }
    out->shape[out->rank++] = dim;
    out->count *= (size_t)dim;
    p = end;
  }
  out->data = malloc(out->count ? out->count * sizeof(float) : 1);
  if (!out->data) {
    fail(error, error_size, path, "out of memory");
    goto done;
  }
  if (fread(out->data, sizeof(float), out->count, f) != out->count) goto truncated;
  ok = 1;
  goto done;

truncated:
  fail(error, error_size, path, "truncated .npy file");
done:
  free(header);
  fclose(f);
  if (!ok) npy_f32_free(out);
  return ok;
}

void npy_f32_free(npy_f32_t* array) {
  free(array->data);
  array->data = NULL;
}
