// c10/ATen CUDA calls behind a C ABI. Every entry point catches C++ exceptions: none may cross
// into Rust.
#include "ltx_shim.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/randn.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>
#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/jit/serialization/import_read.h>
#include <torch/headeronly/version.h>

#include <cuda_runtime_api.h>

#include <cstring>
#include <exception>
#include <mutex>
#include <string>

namespace {

void write_err(char *err, size_t err_len, const char *msg) {
  if (err == nullptr || err_len == 0) return;
  std::strncpy(err, msg, err_len - 1);
  err[err_len - 1] = '\0';
}

template <typename F>
int guarded(char *err, size_t err_len, F &&f) {
  try {
    f();
    return 0;
  } catch (const c10::Error &e) {
    write_err(err, err_len, e.what_without_backtrace());
  } catch (const std::exception &e) {
    write_err(err, err_len, e.what());
  } catch (...) {
    write_err(err, err_len, "unknown C++ exception");
  }
  return 1;
}

void check_device(int device) {
  const int count = c10::cuda::device_count();
  TORCH_CHECK(device >= 0 && device < count, "CUDA device ", device, " does not exist (", count,
              " device(s))");
}

ltx_stream to_c(const c10::cuda::CUDAStream &s) {
  const c10::StreamData3 d = s.pack3();
  ltx_stream out;
  out.id = d.stream_id;
  out.device_index = d.device_index;
  out.device_type = static_cast<int8_t>(d.device_type);
  out.raw = static_cast<void *>(s.stream());
  return out;
}

// Walks a dict tree of tensors depth first, in the dicts' order, naming leaves by their keys.
void walk(const c10::IValue &v, const std::string &name, void *ctx, ltx_named_tensor_sink sink) {
  if (v.isTensor()) {
    TORCH_CHECK(!name.empty(), "the file holds a bare tensor, not a dict of tensors");
    auto *t = new at::Tensor(v.toTensor());
    // The sink owns the handle from here on, even when it asks to stop.
    TORCH_CHECK(sink(ctx, name.c_str(), t) == 0, "stopped at ", name);
    return;
  }
  TORCH_CHECK(v.isGenericDict(), name.empty() ? std::string("the file") : "key " + name,
              " holds a ", v.tagKind(), ", expected a dict of tensors");
  for (const auto &kv : v.toGenericDict()) {
    TORCH_CHECK(kv.key().isString(), "a ", kv.key().tagKind(), " key under ",
                name.empty() ? std::string("the top level") : name, ": only string keys are read");
    const std::string key = kv.key().toStringRef();
    walk(kv.value(), name.empty() ? key : name + "." + key, ctx, sink);
  }
}

}  // namespace

extern "C" {

int ltx_torch_load_tensors(const char *path, void *ctx, ltx_named_tensor_sink sink, char *err,
                           size_t err_len) {
  return guarded(err, err_len, [&] {
    TORCH_CHECK(path != nullptr && sink != nullptr, "null argument");
    // Streams the records from the file (about half the peak memory of reading it whole).
    caffe2::serialize::PyTorchStreamReader reader(path);
    const c10::IValue obj = torch::jit::readArchiveAndTensors(
        "data", /*pickle_prefix=*/"", /*tensor_prefix=*/"", /*type_resolver=*/std::nullopt,
        /*obj_loader=*/std::nullopt, /*device=*/at::Device(at::kCPU), reader);
    walk(obj, "", ctx, sink);
  });
}

const char *ltx_torch_version(void) { return TORCH_VERSION; }

int ltx_cuda_device_count(void) { return c10::cuda::device_count(); }

int ltx_cuda_init(char *err, size_t err_len) {
  return guarded(err, err_len, [] { at::globalContext().lazyInitDevice(c10::DeviceType::CUDA); });
}

int ltx_cuda_memory_stats(int device, ltx_mem_stats *out, char *err, size_t err_len) {
  return guarded(err, err_len, [&] {
    check_device(device);
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device);
    const auto agg = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    out->allocated_bytes = stats.allocated_bytes[agg].current;
    out->reserved_bytes = stats.reserved_bytes[agg].current;
    out->peak_allocated_bytes = stats.allocated_bytes[agg].peak;
    out->peak_reserved_bytes = stats.reserved_bytes[agg].peak;
  });
}

int ltx_cuda_reset_peak_stats(int device, char *err, size_t err_len) {
  return guarded(err, err_len, [&] {
    check_device(device);
    c10::cuda::CUDACachingAllocator::resetPeakStats(device);
  });
}

int ltx_cuda_empty_cache(char *err, size_t err_len) {
  return guarded(err, err_len, [] { c10::cuda::CUDACachingAllocator::emptyCache(); });
}

int ltx_tensor_copy_(void *dst, const void *src, int non_blocking, char *err, size_t err_len) {
  return guarded(err, err_len, [&] {
    TORCH_CHECK(dst != nullptr && src != nullptr, "null tensor");
    static_cast<at::Tensor *>(dst)->copy_(*static_cast<const at::Tensor *>(src),
                                          non_blocking != 0);
  });
}

int ltx_cuda_set_memory_fraction(double fraction, int device, char *err, size_t err_len) {
  return guarded(err, err_len, [&] {
    check_device(device);
    TORCH_CHECK(fraction > 0.0 && fraction <= 1.0, "memory fraction must be in (0, 1], got ",
                fraction);
    c10::cuda::CUDACachingAllocator::setMemoryFraction(fraction, device);
  });
}

int ltx_cuda_stream_from_pool(int device, int high_priority, ltx_stream *out, char *err,
                              size_t err_len) {
  return guarded(err, err_len, [&] {
    check_device(device);
    *out = to_c(c10::cuda::getStreamFromPool(high_priority != 0, device));
  });
}

int ltx_cuda_stream_from_external(void *cuda_stream, int device, ltx_stream *out, char *err,
                                  size_t err_len) {
  return guarded(err, err_len, [&] {
    check_device(device);
    *out = to_c(c10::cuda::getStreamFromExternal(static_cast<cudaStream_t>(cuda_stream), device));
  });
}

int ltx_cuda_current_stream(int device, ltx_stream *out, char *err, size_t err_len) {
  return guarded(err, err_len, [&] {
    check_device(device);
    *out = to_c(c10::cuda::getCurrentCUDAStream(device));
  });
}

int ltx_cuda_set_current_stream(ltx_stream stream, char *err, size_t err_len) {
  return guarded(err, err_len, [&] {
    c10::cuda::setCurrentCUDAStream(c10::cuda::CUDAStream::unpack3(
        stream.id, stream.device_index, static_cast<c10::DeviceType>(stream.device_type)));
  });
}

int ltx_pinned_empty(int64_t bytes, void **out, char *err, size_t err_len) {
  return guarded(err, err_len, [&] {
    TORCH_CHECK(out != nullptr, "null output");
    TORCH_CHECK(bytes > 0, "a pinned buffer needs at least one byte, got ", bytes);
    void *p = nullptr;
    const cudaError_t e =
        cudaHostAlloc(&p, static_cast<size_t>(bytes), cudaHostAllocPortable);
    if (e != cudaSuccess) {
      cudaGetLastError();  // clear the sticky-free error state of this thread
      TORCH_CHECK(false, "cudaHostAlloc of ", bytes, " bytes failed: ", cudaGetErrorString(e));
    }
    try {
      at::Tensor t = at::from_blob(
          p, {bytes}, [](void *q) { cudaFreeHost(q); },
          at::TensorOptions().dtype(at::kByte).device(at::kCPU));
      *out = new at::Tensor(std::move(t));
    } catch (...) {
      cudaFreeHost(p);
      throw;
    }
  });
}

int ltx_tensor_is_pinned(const void *t, int *out, char *err, size_t err_len) {
  return guarded(err, err_len, [&] {
    TORCH_CHECK(t != nullptr && out != nullptr, "null tensor");
    *out = static_cast<const at::Tensor *>(t)->is_pinned() ? 1 : 0;
  });
}

int ltx_generator_new(int device_index, uint64_t seed, void **out, char *err, size_t err_len) {
  return guarded(err, err_len, [&] {
    TORCH_CHECK(out != nullptr, "null output");
    if (device_index < 0) {
      // What torch.manual_seed(seed) makes of the default CPU generator: a fresh mt19937 from
      // the seed and no cached normal sample.
      *out = new at::Generator(at::make_generator<at::CPUGeneratorImpl>(seed));
      return;
    }
    const auto &hooks = at::detail::getCUDAHooks();
    TORCH_CHECK(hooks.hasCUDA(), "no CUDA: libtorch_cuda is not loaded or sees no device");
    check_device(device_index);
    at::Generator g = hooks.getNewGenerator(static_cast<c10::DeviceIndex>(device_index));
    {
      std::lock_guard<std::mutex> lock(g.mutex());
      g.set_current_seed(seed);
    }
    *out = new at::Generator(std::move(g));
  });
}

void ltx_generator_free(void *gen) { delete static_cast<at::Generator *>(gen); }

int ltx_generator_randn(void *gen, const int64_t *sizes, size_t ndim, int dtype, void **out,
                        char *err, size_t err_len) {
  return guarded(err, err_len, [&] {
    TORCH_CHECK(gen != nullptr && out != nullptr && (sizes != nullptr || ndim == 0),
                "null argument");
    const at::Generator &g = *static_cast<at::Generator *>(gen);
    const auto options =
        at::TensorOptions().dtype(static_cast<at::ScalarType>(dtype)).device(g.device());
    at::Tensor t = at::randn(at::IntArrayRef(sizes, ndim), g, options);
    *out = new at::Tensor(std::move(t));
  });
}

}  // extern "C"
