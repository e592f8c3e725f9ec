/* C interface over c10's CUDA API (caching allocator, streams) and ATen's CUDA initialisation.
 * bindgen turns this header into Rust (crates/gpu/build.rs). Every fallible call returns 0 on
 * success, or non-zero with a NUL-terminated message in err (err_len bytes, truncated). */
#ifndef LTX_SHIM_H
#define LTX_SHIM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  int64_t allocated_bytes;
  int64_t reserved_bytes;
  int64_t peak_allocated_bytes;
  int64_t peak_reserved_bytes;
} ltx_mem_stats;

/* A torch CUDA stream: its packed identity (to hand back to c10) and the raw cudaStream_t. */
typedef struct {
  int64_t id;
  int8_t device_index;
  int8_t device_type;
  void *raw;
} ltx_stream;

/* Version of the libtorch headers the shim was compiled against, e.g. "2.11.0". */
const char *ltx_torch_version(void);

/* Devices the CUDA runtime reports; 0 when there is no driver or no device. Never fails. */
int ltx_cuda_device_count(void);

/* ATen's lazy CUDA initialisation (needs libtorch_cuda loaded): sets up the caching allocator. */
int ltx_cuda_init(char *err, size_t err_len);

int ltx_cuda_memory_stats(int device, ltx_mem_stats *out, char *err, size_t err_len);
int ltx_cuda_reset_peak_stats(int device, char *err, size_t err_len);
int ltx_cuda_empty_cache(char *err, size_t err_len);
/* dst.copy_(src, non_blocking) on the current stream. dst and src are at::Tensor* (tch's
 * tensor handles). Host-pinned → device with non_blocking queues the copy without waiting. */
int ltx_tensor_copy_(void *dst, const void *src, int non_blocking, char *err, size_t err_len);
/* Caps this process's share of the device, as torch.cuda.set_per_process_memory_fraction. */
int ltx_cuda_set_memory_fraction(double fraction, int device, char *err, size_t err_len);

int ltx_cuda_stream_from_pool(int device, int high_priority, ltx_stream *out, char *err, size_t err_len);
int ltx_cuda_stream_from_external(void *cuda_stream, int device, ltx_stream *out, char *err, size_t err_len);
int ltx_cuda_current_stream(int device, ltx_stream *out, char *err, size_t err_len);
int ltx_cuda_set_current_stream(ltx_stream stream, char *err, size_t err_len);

/* A 1-D uint8 CPU tensor of exactly `bytes` bytes of page-locked memory from cudaHostAlloc
 * (portable across devices), freed with cudaFreeHost when torch drops its storage. Unlike
 * torch's pinned allocator it does not round the size up to a power of two, and it does not
 * keep freed blocks cached. *out receives a new at::Tensor* (tch's tensor handle). */
int ltx_pinned_empty(int64_t bytes, void **out, char *err, size_t err_len);
/* t.is_pinned() for an at::Tensor* t (needs libtorch_cuda loaded to ever say yes). */
int ltx_tensor_is_pinned(const void *t, int *out, char *err, size_t err_len);

/* Receives one tensor of ltx_torch_load_tensors: its dotted name and a new at::Tensor* that
 * the receiver owns. Returns 0 to go on, non-zero to stop (the load then fails). */
typedef int (*ltx_named_tensor_sink)(void *ctx, const char *name, void *tensor);

/* Reads a torch.save file in the zip format whose object is a tree of dicts with string keys
 * and tensor leaves (as IP-Adapter's ip-adapter.bin: {"image_proj": {...}, "ip_adapter":
 * {...}}) with libtorch's own unpickler, onto the CPU, and hands each tensor to `sink` with the
 * keys joined by '.'. A non-tensor leaf, a non-string key, an unknown pickled class or a
 * legacy (non-zip) file is an error. */
int ltx_torch_load_tensors(const char *path, void *ctx, ltx_named_tensor_sink sink, char *err,
                           size_t err_len);

/* A random number generator of its own (an at::Generator*), seeded with `seed`: a CPU one
 * (device_index < 0), which draws exactly what torch's default CPU generator draws after
 * torch.manual_seed(seed), or one for CUDA device device_index, made through ATen's CUDA hooks
 * (libtorch_cuda must already be loaded; it then draws what that device's default generator
 * draws after torch.manual_seed(seed)). *out receives the handle; free it with
 * ltx_generator_free. */
int ltx_generator_new(int device_index, uint64_t seed, void **out, char *err, size_t err_len);
/* Frees a handle of ltx_generator_new; null is allowed. Never fails. */
void ltx_generator_free(void *gen);
/* at::randn(sizes, gen, dtype) on the generator's device. `dtype` is a c10::ScalarType;
 * *out receives a new at::Tensor* (tch's tensor handle). */
int ltx_generator_randn(void *gen, const int64_t *sizes, size_t ndim, int dtype, void **out,
                        char *err, size_t err_len);

#ifdef __cplusplus
}
#endif

#endif
