// Classify images with an optc artifact on the IREE runtime C API.
//
//   classify [--device local-task|local-sync] [--repeat N] MODEL.vmfb IMAGES.npy
//
// IMAGES.npy: float32, C order, shape (N, *one input without its batch dim), e.g.
// (N, 8, 8) for the digits CNN. Prints "<index> <label>" per image. The input and
// output shapes and the class labels come from the module's reflection metadata
// (optc.inputs, optc.outputs, optc.labels on its function `main`), so the app knows
// nothing about the model. It runs on the CPU driver the metadata names
// (optc.device) unless --device says otherwise. With --repeat N it then times N
// calls on the first batch (input upload, call, output download) and prints the
// latency to stderr.
//
// Bad input (a missing or corrupt .vmfb, images of the wrong shape, a module that
// is not a one-input classifier from optc) prints one line and exits 2.
// The IREE calls follow runtime/src/iree/runtime/demo/hello_world_explained.c.

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "iree/io/file_contents.h"
#include "iree/runtime/api.h"
#include "iree/vm/bytecode/module.h"
#include "npy.h"

#define MAX_RANK 8

typedef struct shape_t {
  int rank;
  iree_hal_dim_t dims[MAX_RANK];
} shape_t;

typedef struct app_t {
  const char* device_name;
  int device_given;  // --device on the command line; else the artifact's optc.device
  const char* module_path;
  const char* images_path;
  long repeat;
  iree_runtime_instance_t* instance;
  iree_runtime_session_t* session;
  iree_vm_function_t main_fn;
  shape_t input;   // the module's input, batch first
  shape_t output;  // batch x classes
  char labels[4096];
  const char* label_of[1024];
} app_t;

static int fail(const char* format, ...) {
  va_list args;
  va_start(args, format);
  fputs("classify: error: ", stderr);
  vfprintf(stderr, format, args);
  fputc('\n', stderr);
  va_end(args);
  return 2;
}

// The first line of an IREE status (consumed), for one-line errors.
static const char* status_line(iree_status_t status, char* buffer, size_t size) {
  iree_host_size_t length = 0;
  if (!iree_status_format(status, size, buffer, &length)) {
    snprintf(buffer, size, "%s", iree_status_code_string(iree_status_code(status)));
  }
  iree_status_ignore(status);
  char* newline = strchr(buffer, '\n');
  if (newline) *newline = '\0';
  if (strlen(buffer) > 200) strcpy(buffer + 197, "...");
  return buffer;
}

// "1x8x8xf32" (IREE's tool syntax, as optc writes it) -> dims; only f32 is accepted.
// A "?" batch (optc compile --dynamic-batch: any batch size) becomes dims[0] = 0.
static int parse_f32_type(iree_string_view_t text, shape_t* out) {
  char buffer[128];
  if (text.size == 0 || text.size >= sizeof(buffer)) return 0;
  memcpy(buffer, text.data, text.size);
  buffer[text.size] = '\0';
  out->rank = 0;
  char* p = buffer;
  if (p[0] == '?' && p[1] == 'x') {
    out->dims[out->rank++] = 0;
    p += 2;
  }
  while (*p >= '0' && *p <= '9') {
    if (out->rank == MAX_RANK) return 0;
    char* end = NULL;
    out->dims[out->rank++] = (iree_hal_dim_t)strtoull(p, &end, 10);
    if (*end != 'x') return 0;
    p = end + 1;
  }
  return strcmp(p, "f32") == 0;
}

static void format_dims(const iree_hal_dim_t* dims, int rank, char* buffer, size_t size) {
  size_t used = 0;
  buffer[0] = '\0';
  for (int i = 0; i < rank && used < size; ++i) {
    used += snprintf(buffer + used, size - used, i ? "x%lu" : "%lu", (unsigned long)dims[i]);
  }
}

static iree_string_view_t attr(app_t* app, const char* key) {
  return iree_vm_function_lookup_attr_by_name(&app->main_fn, iree_make_cstring_view(key));
}

// The module's bytecode, loaded once; a session appends it after the device is chosen.
static int load_module(app_t* app, iree_vm_module_t** out_module) {
  char message[512];
  iree_allocator_t host = iree_runtime_instance_host_allocator(app->instance);
  iree_io_file_contents_t* contents = NULL;
  iree_status_t status = iree_io_file_contents_read(iree_make_cstring_view(app->module_path), host, &contents);
  if (iree_status_is_ok(status)) {
    iree_allocator_t deallocator = iree_io_file_contents_deallocator(contents);
    status = iree_vm_bytecode_module_create(iree_runtime_instance_vm_instance(app->instance), IREE_VM_BYTECODE_MODULE_FLAG_NONE,
                                            contents->const_buffer, deallocator, host, out_module);
    // the contents are the module's now, or must be freed here (as iree_runtime_session does)
    if (!iree_status_is_ok(status)) iree_allocator_free(deallocator, (void*)contents->const_buffer.data);
  }
  if (!iree_status_is_ok(status)) {
    return fail("%s: not an IREE module (.vmfb) this runtime can load: %s", app->module_path,
                status_line(status, message, sizeof(message)));
  }
  return 0;
}

// Without --device: the CPU driver optc chose for the artifact (optc.device on
// main: local-sync for small models, whose calls are faster on the calling thread).
static void choose_device(app_t* app, iree_vm_module_t* module) {
  if (app->device_given) return;
  iree_vm_function_t main_fn;
  iree_status_t status = iree_vm_module_lookup_function_by_name(module, IREE_VM_FUNCTION_LINKAGE_EXPORT, IREE_SV("main"), &main_fn);
  if (!iree_status_is_ok(status)) {
    iree_status_ignore(status);  // the session's lookup reports a missing main
    return;
  }
  iree_string_view_t named = iree_vm_function_lookup_attr_by_name(&main_fn, IREE_SV("optc.device"));
  if (iree_string_view_equal(named, IREE_SV("local-sync"))) app->device_name = "local-sync";
  if (iree_string_view_equal(named, IREE_SV("local-task"))) app->device_name = "local-task";
}

// A session on device `app->device_name` holding `module`.
static int open_session(app_t* app, iree_vm_module_t* module) {
  char message[512];
  iree_hal_device_t* device = NULL;
  iree_status_t status = iree_runtime_instance_try_create_default_device(
      app->instance, iree_make_cstring_view(app->device_name), &device);
  if (!iree_status_is_ok(status)) {
    return fail("--device %s: %s (this build has local-task and local-sync)", app->device_name,
                status_line(status, message, sizeof(message)));
  }
  iree_runtime_session_options_t session_options;
  iree_runtime_session_options_initialize(&session_options);
  status = iree_runtime_session_create_with_device(app->instance, &session_options, device,
                                                   iree_runtime_instance_host_allocator(app->instance),
                                                   &app->session);
  iree_hal_device_release(device);
  if (!iree_status_is_ok(status)) return fail("cannot create a session: %s", status_line(status, message, sizeof(message)));

  status = iree_runtime_session_append_module(app->session, module);
  if (iree_status_code(status) == IREE_STATUS_INCOMPATIBLE) {
    iree_status_ignore(status);
    return fail("%s: compiled for a device --device %s is not (this app runs CPU artifacts: optc --target cpu)",
                app->module_path, app->device_name);
  }
  if (!iree_status_is_ok(status)) {
    return fail("%s: not an IREE module (.vmfb) this runtime can load: %s", app->module_path,
                status_line(status, message, sizeof(message)));
  }
  status = iree_runtime_session_lookup_function(app->session, iree_make_cstring_view("module.main"), &app->main_fn);
  if (!iree_status_is_ok(status)) {
    iree_status_ignore(status);
    return fail("%s: the module has no function main", app->module_path);
  }
  return 0;
}

static int open_module(app_t* app) {
  FILE* f = fopen(app->module_path, "rb");
  if (!f) return fail("%s: cannot open the module (%s)", app->module_path, strerror(errno));
  fclose(f);

  char message[512];
  iree_runtime_instance_options_t instance_options;
  iree_runtime_instance_options_initialize(&instance_options);
  iree_runtime_instance_options_use_all_available_drivers(&instance_options);
  iree_status_t status =
      iree_runtime_instance_create(&instance_options, iree_allocator_system(), &app->instance);
  if (!iree_status_is_ok(status)) return fail("cannot create the IREE runtime: %s", status_line(status, message, sizeof(message)));

  iree_vm_module_t* module = NULL;
  int rc = load_module(app, &module);
  if (rc) return rc;
  choose_device(app, module);
  rc = open_session(app, module);
  iree_vm_module_release(module);  // the session holds its own reference
  if (rc) return rc;

  // The signature from optc's reflection metadata.
  iree_string_view_t inputs = attr(app, "optc.inputs");
  iree_string_view_t outputs = attr(app, "optc.outputs");
  if (iree_string_view_is_empty(inputs) || iree_string_view_is_empty(outputs)) {
    return fail("%s: no optc metadata on main (optc.inputs/optc.outputs); compile the model with optc", app->module_path);
  }
  if (!parse_f32_type(inputs, &app->input) || app->input.rank < 1) {
    return fail("%s: main takes %.*s; this app classifies with one float32 input", app->module_path, (int)inputs.size, inputs.data);
  }
  if (!parse_f32_type(outputs, &app->output) || app->output.rank != 2 || app->output.dims[0] != app->input.dims[0] ||
      app->output.dims[1] > IREE_ARRAYSIZE(app->label_of)) {
    return fail("%s: main returns %.*s; this app needs one float32 batch x classes output", app->module_path,
                (int)outputs.size, outputs.data);
  }

  // Labels: optc.labels ("a,b,c"), else the class index.
  iree_string_view_t labels = attr(app, "optc.labels");
  size_t classes = (size_t)app->output.dims[1];
  size_t used = 0;
  for (size_t c = 0; c < classes; ++c) {
    iree_string_view_t label = iree_string_view_empty();
    if (!iree_string_view_is_empty(labels)) {
      iree_string_view_split(labels, ',', &label, &labels);
    }
    int written = label.size ? snprintf(app->labels + used, sizeof(app->labels) - used, "%.*s", (int)label.size, label.data)
                             : snprintf(app->labels + used, sizeof(app->labels) - used, "%zu", c);
    if (written < 0 || used + written + 1 > sizeof(app->labels)) return fail("%s: optc.labels is too long", app->module_path);
    app->label_of[c] = app->labels + used;
    used += written + 1;
  }
  return 0;
}

// Uploads |batch| images from |pixels|, calls main, and downloads the logits.
static iree_status_t run_batch(app_t* app, iree_runtime_call_t* call, const float* pixels, float* logits) {
  iree_hal_device_t* device = iree_runtime_session_device(app->session);
  size_t input_count = 1, output_count = 1;
  for (int i = 0; i < app->input.rank; ++i) input_count *= app->input.dims[i];
  for (int i = 0; i < app->output.rank; ++i) output_count *= app->output.dims[i];

  iree_runtime_call_reset(call);
  iree_hal_buffer_view_t* input = NULL;
  IREE_RETURN_IF_ERROR(iree_hal_buffer_view_allocate_buffer_copy(
      device, iree_runtime_session_device_allocator(app->session), app->input.rank, app->input.dims,
      IREE_HAL_ELEMENT_TYPE_FLOAT_32, IREE_HAL_ENCODING_TYPE_DENSE_ROW_MAJOR,
      (iree_hal_buffer_params_t){
          .type = IREE_HAL_MEMORY_TYPE_DEVICE_LOCAL,
          .access = IREE_HAL_MEMORY_ACCESS_ALL,
          .usage = IREE_HAL_BUFFER_USAGE_DEFAULT,
      },
      iree_make_const_byte_span(pixels, input_count * sizeof(float)), &input));
  iree_status_t status = iree_runtime_call_inputs_push_back_buffer_view(call, input);
  iree_hal_buffer_view_release(input);  // the call retains it
  if (iree_status_is_ok(status)) status = iree_runtime_call_invoke(call, /*flags=*/0);

  iree_hal_buffer_view_t* output = NULL;
  if (iree_status_is_ok(status)) status = iree_runtime_call_outputs_pop_front_buffer_view(call, &output);
  if (iree_status_is_ok(status)) {
    status = iree_hal_device_transfer_d2h(device, iree_hal_buffer_view_buffer(output), 0, logits,
                                          output_count * sizeof(float), IREE_HAL_TRANSFER_BUFFER_FLAG_DEFAULT,
                                          iree_infinite_timeout());
  }
  iree_hal_buffer_view_release(output);
  return status;
}

static int compare_doubles(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return (x > y) - (x < y);
}

#define DYNAMIC_BATCH 32  // images per call for an artifact that takes any batch size

static int classify(app_t* app, const npy_f32_t* images) {
  // A dynamic-batch artifact runs up to DYNAMIC_BATCH images per call.
  if (app->input.dims[0] == 0 && images->rank >= 1 && images->shape[0] > 0) {
    iree_hal_dim_t n = (iree_hal_dim_t)images->shape[0];
    app->input.dims[0] = app->output.dims[0] = n < DYNAMIC_BATCH ? n : DYNAMIC_BATCH;
  }
  // The images must be inputs without their batch dimension.
  const iree_hal_dim_t batch = app->input.dims[0];
  int fits = images->rank == app->input.rank;
  for (int i = 1; fits && i < app->input.rank; ++i) fits = (iree_hal_dim_t)images->shape[i] == app->input.dims[i];
  if (!fits || images->shape[0] == 0) {
    char want[128], got[128];
    iree_hal_dim_t got_dims[NPY_MAX_RANK];
    for (int i = 0; i < images->rank; ++i) got_dims[i] = (iree_hal_dim_t)images->shape[i];
    format_dims(app->input.dims + 1, app->input.rank - 1, want, sizeof(want));
    format_dims(got_dims, images->rank, got, sizeof(got));
    return fail("%s holds an array of %s but %s takes images of %s (N x %s float32; is it an artifact of another model?)",
                app->images_path, got[0] ? got : "a scalar", app->module_path, want, want);
  }
  const size_t per_image = images->count / (size_t)images->shape[0];
  const size_t count = (size_t)images->shape[0];
  const size_t classes = (size_t)app->output.dims[1];
  float* chunk = malloc(batch * per_image * sizeof(float));
  float* logits = malloc(batch * classes * sizeof(float));
  if (!chunk || !logits) return fail("out of memory");

  iree_runtime_call_t call;
  char message[512];
  iree_status_t status = iree_runtime_call_initialize(app->session, app->main_fn, &call);
  // Batches of exactly `batch` images (the artifact's shapes are static); the last
  // one is padded with copies of its final image, whose predictions are dropped.
  for (size_t start = 0; iree_status_is_ok(status) && start < count; start += batch) {
    size_t real = count - start < batch ? count - start : batch;
    for (size_t j = 0; j < batch; ++j) {
      size_t src = start + (j < real ? j : real - 1);
      memcpy(chunk + j * per_image, images->data + src * per_image, per_image * sizeof(float));
    }
    status = run_batch(app, &call, chunk, logits);
    for (size_t j = 0; iree_status_is_ok(status) && j < real; ++j) {
      size_t best = 0;
      for (size_t c = 1; c < classes; ++c) {
        if (logits[j * classes + c] > logits[j * classes + best]) best = c;
      }
      printf("%zu %s\n", start + j, app->label_of[best]);
    }
  }
  fflush(stdout);

  if (iree_status_is_ok(status) && app->repeat > 0) {
    // Timed calls on the first batch, the same work as each batch above.
    memcpy(chunk, images->data, (count < batch ? count : batch) * per_image * sizeof(float));
    double* ms = malloc(app->repeat * sizeof(double));
    if (!ms) return fail("out of memory");
    for (long r = 0; iree_status_is_ok(status) && r < app->repeat; ++r) {
      iree_time_t begin = iree_time_now();
      status = run_batch(app, &call, chunk, logits);
      ms[r] = (double)(iree_time_now() - begin) / 1e6;
    }
    if (iree_status_is_ok(status)) {
      double sum = 0;
      for (long r = 0; r < app->repeat; ++r) sum += ms[r];
      qsort(ms, app->repeat, sizeof(double), compare_doubles);
      fprintf(stderr, "latency: %ld calls of batch %lu on %s: median %.4f ms, mean %.4f ms, min %.4f ms; %.4f ms per image (median)\n",
              app->repeat, (unsigned long)batch, app->device_name, ms[app->repeat / 2], sum / app->repeat, ms[0],
              ms[app->repeat / 2] / batch);
    }
    free(ms);
  }
  iree_runtime_call_deinitialize(&call);
  free(chunk);
  free(logits);
  if (!iree_status_is_ok(status)) return fail("running %s failed: %s", app->module_path, status_line(status, message, sizeof(message)));
  return 0;
}

static int usage(void) {
  fputs("usage: classify [--device local-task|local-sync] [--repeat N] MODEL.vmfb IMAGES.npy\n", stderr);
  return 2;
}

int main(int argc, char** argv) {
  app_t app = {.device_name = "local-task"};
  int positional = 0;
  for (int i = 1; i < argc; ++i) {
    if (strcmp(argv[i], "--device") == 0 && i + 1 < argc) {
      app.device_name = argv[++i];
      app.device_given = 1;
    } else if (strcmp(argv[i], "--repeat") == 0 && i + 1 < argc) {
      char* end = NULL;
      app.repeat = strtol(argv[++i], &end, 10);
      if (*end || app.repeat <= 0) return fail("--repeat %s: must be a positive integer", argv[i]);
    } else if (argv[i][0] == '-' && argv[i][1]) {
      return usage();
    } else if (positional == 0) {
      app.module_path = argv[i], ++positional;
    } else if (positional == 1) {
      app.images_path = argv[i], ++positional;
    } else {
      return usage();
    }
  }
  if (positional != 2) return usage();

  npy_f32_t images;
  char error[512];
  if (!npy_f32_read(app.images_path, &images, error, sizeof(error))) return fail("%s", error);
  int rc = open_module(&app);
  if (rc == 0) rc = classify(&app, &images);
  npy_f32_free(&images);
  iree_runtime_session_release(app.session);
  iree_runtime_instance_release(app.instance);
  return rc;
}
