// pybind11 module that runs the CUDA kernels on numpy arrays: the harness of
// tests/test_cuda_emulation.py and of the GPU check kit (tools/gpu_kit). One
// source, two builds:
//  * tfl_cuda_emu (tests/cuda_emu/build.py): g++, the kernels under
//    cuda_emulation.h in this translation unit; arrays are used in place.
//  * tfl_cuda_gpu (tools/gpu_kit/backends.py): g++ for this file with
//    TFL_EMU_DEVICE_MEMORY and TFL_EMU_SEPARATE_PARTS, the kernels compiled
//    by nvcc (tools/gpu_kit/kit_part.cu), linked with the CUDA runtime. Each
//    call copies its arrays to device memory at the same offset from a
//    256-byte boundary as on the host (so misaligned inputs stay
//    misaligned), one device copy per distinct host array (so aliasing
//    outputs stay aliased), runs, synchronises and copies the outputs back.
//    It also has timing functions (bench_*) and device_info().
// 16-bit floats travel as their bit patterns (numpy uint16/float16 arrays)
// with the dtype named separately.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "emu_ops.h"

#if defined(TFL_EMU_DEVICE_MEMORY)
#include <cuda_runtime_api.h>
#endif

#ifndef TFL_EMU_MODULE_NAME
#define TFL_EMU_MODULE_NAME tfl_cuda_emu
#endif

namespace py = pybind11;

namespace {

struct Array {
  void* data = nullptr;
  std::vector<py::ssize_t> shape;
  size_t bytes = 0;
};

// A C-contiguous buffer of the named dtype's item size.
Array Check(const py::buffer& buffer, const std::string& what, tfl_emu::Type type, bool writable) {
  py::buffer_info info = buffer.request(writable);
  if (static_cast<size_t>(info.itemsize) != tfl_emu::SizeOf(type)) {
    throw std::invalid_argument(what + ": item size " + std::to_string(info.itemsize) + " does not match its dtype");
  }
  py::ssize_t expected_stride = info.itemsize;
  for (py::ssize_t d = info.ndim - 1; d >= 0; --d) {
    if (info.shape[d] > 1 && info.strides[d] != expected_stride) {
      throw std::invalid_argument(what + " must be C-contiguous");
    }
    expected_stride *= info.shape[d];
  }
  return Array{info.ptr, info.shape, static_cast<size_t>(info.size) * static_cast<size_t>(info.itemsize)};
}

#if defined(TFL_EMU_DEVICE_MEMORY)

void CudaCheck(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")");
  }
}

// Device copies of a call's arrays (see the top of the file).
class Memory {
 public:
  Memory() = default;
  Memory(const Memory&) = delete;
  Memory& operator=(const Memory&) = delete;
  ~Memory() {
    for (const Mapping& m : mappings_) cudaFree(m.base);
  }

  // The device copy of a host array; outputs are copied back by Finish().
  void* Map(const Array& a, bool output) {
    for (Mapping& m : mappings_) {
      if (m.host == a.data) {
        m.output = m.output || output;
        return m.device;
      }
    }
    const size_t offset = reinterpret_cast<uintptr_t>(a.data) % 256;
    // Exactly the array's bytes past the offset, so that memcheck sees a
    // read past its end; at least one byte, so that even an empty array has
    // a distinct address.
    Mapping m{a.data, nullptr, nullptr, a.bytes, output};
    CudaCheck(cudaMalloc(&m.base, offset + (a.bytes > 0 ? a.bytes : 1)), "cudaMalloc");
    m.device = static_cast<char*>(m.base) + offset;
    mappings_.push_back(m);
    if (a.bytes > 0) CudaCheck(cudaMemcpy(m.device, a.data, a.bytes, cudaMemcpyHostToDevice), "cudaMemcpy H2D");
    return m.device;
  }

  // Uninitialised device memory of its own (timing runs).
  void* Allocate(size_t bytes) {
    Mapping m{nullptr, nullptr, nullptr, 0, false};
    CudaCheck(cudaMalloc(&m.base, bytes > 0 ? bytes : 1), "cudaMalloc");
    m.device = m.base;
    mappings_.push_back(m);
    return m.device;
  }

  void Finish() {
    CudaCheck(cudaGetLastError(), "kernel launch");
    CudaCheck(cudaDeviceSynchronize(), "kernel execution");
    for (const Mapping& m : mappings_) {
      if (m.output && m.bytes > 0) {
        CudaCheck(cudaMemcpy(m.host, m.device, m.bytes, cudaMemcpyDeviceToHost), "cudaMemcpy D2H");
      }
    }
  }

 private:
  struct Mapping {
    void* host;
    void* base;
    void* device;
    size_t bytes;
    bool output;
  };
  std::vector<Mapping> mappings_;
};

#else

// The emulation reads and writes the host arrays themselves.
class Memory {
 public:
  void* Map(const Array& a, bool) { return a.data; }
  void Finish() {}
};

#endif

tfl_emu::Options Options(int multiprocessors, int64_t piece_length, int64_t max_grid) {
  return tfl_emu::MakeOptions(multiprocessors, piece_length, max_grid);
}

py::dict Info(const tfl_emu::LaunchInfo& info) {
  py::dict d;
  d["shape"] = info.shape;
  d["grid"] = info.grid;
  d["pieces_per_row"] = info.pieces_per_row;
  d["piece_length"] = info.piece_length;
  return d;
}

py::dict Plan(int64_t rows, int64_t row_length, int64_t partial_bytes, int multiprocessors, int64_t piece_length,
              int64_t max_grid) {
  const tfl_emu::PlanInfo plan =
      tfl_emu::Plan(rows, row_length, partial_bytes, Options(multiprocessors, piece_length, max_grid));
  py::dict d = Info(plan.launch);
  d["scratch_bytes"] = plan.scratch_bytes;
  return d;
}

void CheckBpmllShapes(const Array& labels, const Array& pred, const Array& loss, const Array& grad) {
  if (pred.shape.size() != 2 || labels.shape != pred.shape || grad.shape != pred.shape ||
      loss.shape != std::vector<py::ssize_t>{pred.shape[0]}) {
    throw std::invalid_argument("bpmll: shapes must be y_true = y_pred = grad = (rows, labels), loss = (rows,)");
  }
}

py::dict Bpmll(const py::buffer& y_true, const std::string& label_dtype, const py::buffer& y_pred,
               const std::string& dtype, const py::buffer& loss, const py::buffer& grad, int multiprocessors,
               int64_t piece_length, int64_t max_grid) {
  const tfl_emu::Type type = tfl_emu::ParseType(dtype), label_type = tfl_emu::ParseType(label_dtype);
  Array pred = Check(y_pred, "y_pred", type, false);
  Array labels = Check(y_true, "y_true", label_type, false);
  Array loss_out = Check(loss, "loss", type, true);
  Array grad_out = Check(grad, "grad", type, true);
  CheckBpmllShapes(labels, pred, loss_out, grad_out);
  tfl_emu::LaunchInfo info;
  {
    py::gil_scoped_release release;
    Memory memory;
    info = tfl_emu::Bpmll(type, label_type, memory.Map(labels, false), memory.Map(pred, false),
                          memory.Map(loss_out, true), memory.Map(grad_out, true), pred.shape[0], pred.shape[1],
                          Options(multiprocessors, piece_length, max_grid));
    memory.Finish();
  }
  return Info(info);
}

void CheckScaleShapes(const Array& s, const Array& x, const Array& o) {
  if (x.shape.size() != 2 || o.shape != x.shape || s.shape != std::vector<py::ssize_t>{x.shape[0]}) {
    throw std::invalid_argument("scale_rows: shapes must be in = out = (rows, labels), scale = (rows,)");
  }
}

py::dict ScaleRows(const py::buffer& scale, const py::buffer& in, const py::buffer& out, const std::string& dtype,
                   int multiprocessors, int64_t piece_length, int64_t max_grid) {
  const tfl_emu::Type type = tfl_emu::ParseType(dtype);
  Array s = Check(scale, "scale", type, false);
  Array x = Check(in, "in", type, false);
  Array o = Check(out, "out", type, true);
  CheckScaleShapes(s, x, o);
  tfl_emu::LaunchInfo info;
  {
    py::gil_scoped_release release;
    Memory memory;
    void* s_device = memory.Map(s, false);
    void* x_device = memory.Map(x, false);
    info = tfl_emu::ScaleRows(type, s_device, x_device, memory.Map(o, true), x.shape[0], x.shape[1],
                              Options(multiprocessors, piece_length, max_grid));
    memory.Finish();
  }
  return Info(info);
}

bool HasMask(const py::object& mask, const std::vector<py::ssize_t>& shape, Array* out) {
  if (mask.is_none()) return false;
  *out = Check(mask.cast<py::buffer>(), "mask", tfl_emu::Type::kBool, false);
  if (out->shape != shape) throw std::invalid_argument("mask must have the shape of y_pred");
  return true;
}

void CheckCorrelationShapes(const Array& y, const Array& x, const Array& per_step, const Array& stats,
                            const char* what) {
  if (x.shape.size() != 2 || y.shape != x.shape || per_step.shape != x.shape ||
      stats.shape != std::vector<py::ssize_t>{x.shape[0], 5}) {
    throw std::invalid_argument(std::string(what) + ": shapes must be (rows, steps), row_stats (rows, 5)");
  }
}

py::dict CorrelationForward(const py::buffer& y_true, const py::buffer& y_pred, const py::object& mask,
                            const std::string& dtype, double epsilon, bool concordance, const py::buffer& loss,
                            const py::buffer& row_stats, int multiprocessors, int64_t piece_length, int64_t max_grid) {
  const tfl_emu::Type type = tfl_emu::ParseType(dtype);
  Array y = Check(y_true, "y_true", type, false);
  Array x = Check(y_pred, "y_pred", type, false);
  Array l = Check(loss, "loss", type, true);
  Array stats = Check(row_stats, "row_stats", tfl_emu::Type::kDouble, true);
  CheckCorrelationShapes(y, x, l, stats, "correlation_forward");
  Array m;
  const bool has_mask = HasMask(mask, x.shape, &m);
  tfl_emu::LaunchInfo info;
  {
    py::gil_scoped_release release;
    Memory memory;
    const void* y_device = memory.Map(y, false);
    const void* x_device = memory.Map(x, false);
    const bool* m_device = has_mask ? static_cast<const bool*>(memory.Map(m, false)) : nullptr;
    void* l_device = memory.Map(l, true);
    info = tfl_emu::CorrelationForward(type, y_device, x_device, m_device, static_cast<float>(epsilon), concordance,
                                       l_device, static_cast<double*>(memory.Map(stats, true)), x.shape[0],
                                       x.shape[1], Options(multiprocessors, piece_length, max_grid));
    memory.Finish();
  }
  return Info(info);
}

py::dict CorrelationBackward(const py::buffer& grad_loss, const py::buffer& y_true, const py::buffer& y_pred,
                             const py::object& mask, const py::buffer& row_stats, const std::string& dtype,
                             double epsilon, bool concordance, const py::object& grad_y_true,
                             const py::buffer& grad_y_pred, int multiprocessors, int64_t piece_length,
                             int64_t max_grid) {
  const tfl_emu::Type type = tfl_emu::ParseType(dtype);
  Array g = Check(grad_loss, "grad_loss", type, false);
  Array y = Check(y_true, "y_true", type, false);
  Array x = Check(y_pred, "y_pred", type, false);
  Array stats = Check(row_stats, "row_stats", tfl_emu::Type::kDouble, false);
  // None: y_true's gradient not wanted (the op's compute_grad_y_true = false).
  const bool want_y = !grad_y_true.is_none();
  Array gy = want_y ? Check(grad_y_true.cast<py::buffer>(), "grad_y_true", type, true) : Array{};
  Array gx = Check(grad_y_pred, "grad_y_pred", type, true);
  CheckCorrelationShapes(y, x, g, stats, "correlation_backward");
  if ((want_y && gy.shape != x.shape) || gx.shape != x.shape) {
    throw std::invalid_argument("correlation_backward: gradients must be (rows, steps)");
  }
  Array m;
  const bool has_mask = HasMask(mask, x.shape, &m);
  tfl_emu::LaunchInfo info;
  {
    py::gil_scoped_release release;
    Memory memory;
    const void* g_device = memory.Map(g, false);
    const void* y_device = memory.Map(y, false);
    const void* x_device = memory.Map(x, false);
    const bool* m_device = has_mask ? static_cast<const bool*>(memory.Map(m, false)) : nullptr;
    const double* stats_device = static_cast<const double*>(memory.Map(stats, false));
    void* gy_device = want_y ? memory.Map(gy, true) : nullptr;
    void* gx_device = memory.Map(gx, true);
    info = tfl_emu::CorrelationBackward(type, g_device, y_device, x_device, m_device, stats_device,
                                        static_cast<float>(epsilon), concordance, gy_device, gx_device, x.shape[0],
                                        x.shape[1], Options(multiprocessors, piece_length, max_grid));
    memory.Finish();
  }
  return Info(info);
}

#if defined(TFL_EMU_DEVICE_MEMORY)

// Milliseconds of each of `runs` calls of launch(), by CUDA events on the
// default stream, after `warmup` untimed calls.
std::vector<double> TimeLaunches(const std::function<void()>& launch, int warmup, int runs) {
  for (int i = 0; i < warmup; ++i) launch();
  CudaCheck(cudaDeviceSynchronize(), "warm-up");
  cudaEvent_t start, stop;
  CudaCheck(cudaEventCreate(&start), "cudaEventCreate");
  CudaCheck(cudaEventCreate(&stop), "cudaEventCreate");
  std::vector<double> ms;
  for (int i = 0; i < runs; ++i) {
    CudaCheck(cudaEventRecord(start, nullptr), "cudaEventRecord");
    launch();
    CudaCheck(cudaEventRecord(stop, nullptr), "cudaEventRecord");
    CudaCheck(cudaEventSynchronize(stop), "timed run");
    float elapsed = 0;
    CudaCheck(cudaEventElapsedTime(&elapsed, start, stop), "cudaEventElapsedTime");
    ms.push_back(elapsed);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  CudaCheck(cudaGetLastError(), "timed launches");
  return ms;
}

py::dict Timed(const std::vector<double>& ms, const tfl_emu::LaunchInfo& info) {
  py::dict d = Info(info);
  d["ms"] = ms;
  return d;
}

py::dict BenchBpmll(const py::buffer& y_true, const std::string& label_dtype, const py::buffer& y_pred,
                    const std::string& dtype, int multiprocessors, int warmup, int runs) {
  const tfl_emu::Type type = tfl_emu::ParseType(dtype), label_type = tfl_emu::ParseType(label_dtype);
  Array pred = Check(y_pred, "y_pred", type, false);
  Array labels = Check(y_true, "y_true", label_type, false);
  if (pred.shape.size() != 2 || labels.shape != pred.shape) throw std::invalid_argument("bench_bpmll: shapes");
  const int64_t rows = pred.shape[0], length = pred.shape[1];
  std::vector<double> ms;
  tfl_emu::LaunchInfo info;
  {
    py::gil_scoped_release release;
    Memory memory;
    const void* yt = memory.Map(labels, false);
    const void* yp = memory.Map(pred, false);
    void* loss = memory.Allocate(rows * tfl_emu::SizeOf(type));
    void* grad = memory.Allocate(rows * length * tfl_emu::SizeOf(type));
    const tfl_emu::Options options = Options(multiprocessors, 0, 0);
    ms = TimeLaunches([&] { info = tfl_emu::Bpmll(type, label_type, yt, yp, loss, grad, rows, length, options); },
                      warmup, runs);
  }
  return Timed(ms, info);
}

py::dict BenchScaleRows(const py::buffer& scale, const py::buffer& in, const std::string& dtype, int multiprocessors,
                        int warmup, int runs) {
  const tfl_emu::Type type = tfl_emu::ParseType(dtype);
  Array s = Check(scale, "scale", type, false);
  Array x = Check(in, "in", type, false);
  if (x.shape.size() != 2 || s.shape != std::vector<py::ssize_t>{x.shape[0]}) {
    throw std::invalid_argument("bench_scale_rows: shapes");
  }
  std::vector<double> ms;
  tfl_emu::LaunchInfo info;
  {
    py::gil_scoped_release release;
    Memory memory;
    const void* s_device = memory.Map(s, false);
    const void* x_device = memory.Map(x, false);
    void* out = memory.Allocate(x.bytes);
    const tfl_emu::Options options = Options(multiprocessors, 0, 0);
    ms = TimeLaunches(
        [&] { info = tfl_emu::ScaleRows(type, s_device, x_device, out, x.shape[0], x.shape[1], options); }, warmup,
        runs);
  }
  return Timed(ms, info);
}

// direction "forward": FusedCorrelationLoss; "backward": FusedCorrelationLossGrad
// from the forward's row statistics (computed once, untimed).
py::dict BenchCorrelation(const std::string& direction, const py::buffer& grad_loss, const py::buffer& y_true,
                          const py::buffer& y_pred, const py::object& mask, const std::string& dtype,
                          bool concordance, bool want_grad_y_true, int multiprocessors, int warmup, int runs) {
  const tfl_emu::Type type = tfl_emu::ParseType(dtype);
  Array g = Check(grad_loss, "grad_loss", type, false);
  Array y = Check(y_true, "y_true", type, false);
  Array x = Check(y_pred, "y_pred", type, false);
  if (x.shape.size() != 2 || y.shape != x.shape || g.shape != x.shape) {
    throw std::invalid_argument("bench_correlation: shapes");
  }
  Array m;
  const bool has_mask = HasMask(mask, x.shape, &m);
  const int64_t rows = x.shape[0], steps = x.shape[1];
  const bool forward = direction == "forward";
  if (!forward && direction != "backward") throw std::invalid_argument("direction: forward or backward");
  std::vector<double> ms;
  tfl_emu::LaunchInfo info;
  {
    py::gil_scoped_release release;
    Memory memory;
    const void* g_device = memory.Map(g, false);
    const void* y_device = memory.Map(y, false);
    const void* x_device = memory.Map(x, false);
    const bool* m_device = has_mask ? static_cast<const bool*>(memory.Map(m, false)) : nullptr;
    void* loss = memory.Allocate(x.bytes);
    double* stats = static_cast<double*>(memory.Allocate(rows * 5 * sizeof(double)));
    void* grad_y = want_grad_y_true ? memory.Allocate(x.bytes) : nullptr;
    void* grad_x = memory.Allocate(x.bytes);
    const tfl_emu::Options options = Options(multiprocessors, 0, 0);
    auto run_forward = [&] {
      info = tfl_emu::CorrelationForward(type, y_device, x_device, m_device, 1e-7f, concordance, loss, stats, rows,
                                         steps, options);
    };
    if (forward) {
      ms = TimeLaunches(run_forward, warmup, runs);
    } else {
      run_forward();
      ms = TimeLaunches(
          [&] {
            info = tfl_emu::CorrelationBackward(type, g_device, y_device, x_device, m_device, stats, 1e-7f,
                                                concordance, grad_y, grad_x, rows, steps, options);
          },
          warmup, runs);
    }
  }
  return Timed(ms, info);
}

// A device-to-device copy of `bytes` bytes (cudaMemcpyAsync on the default
// stream), timed like the kernels.
py::dict BenchCopy(int64_t bytes, int warmup, int runs) {
  std::vector<double> ms;
  {
    py::gil_scoped_release release;
    Memory memory;
    void* a = memory.Allocate(bytes);
    void* b = memory.Allocate(bytes);
    CudaCheck(cudaMemset(a, 1, bytes), "cudaMemset");
    ms = TimeLaunches([&] { CudaCheck(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, nullptr), "D2D"); },
                      warmup, runs);
  }
  py::dict d;
  d["ms"] = ms;
  return d;
}

py::dict DeviceInfo() {
  int device = 0, driver = 0, runtime = 0;
  CudaCheck(cudaGetDevice(&device), "cudaGetDevice");
  cudaDeviceProp prop;
  CudaCheck(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
  cudaDriverGetVersion(&driver);
  cudaRuntimeGetVersion(&runtime);
  int memory_clock_khz = 0, bus_width = 0;
  cudaDeviceGetAttribute(&memory_clock_khz, cudaDevAttrMemoryClockRate, device);
  cudaDeviceGetAttribute(&bus_width, cudaDevAttrGlobalMemoryBusWidth, device);
  py::dict d;
  d["name"] = std::string(prop.name);
  d["compute_capability"] = std::to_string(prop.major) + "." + std::to_string(prop.minor);
  d["multiprocessors"] = prop.multiProcessorCount;
  d["global_memory_bytes"] = static_cast<int64_t>(prop.totalGlobalMem);
  d["l2_cache_bytes"] = prop.l2CacheSize;
  d["memory_clock_khz"] = memory_clock_khz;
  d["memory_bus_width_bits"] = bus_width;
  d["cuda_driver_version"] = driver;
  d["cuda_runtime_version"] = runtime;
  return d;
}

#endif  // TFL_EMU_DEVICE_MEMORY

}  // namespace

PYBIND11_MODULE(TFL_EMU_MODULE_NAME, m) {
#if defined(TFL_EMU_DEVICE_MEMORY)
  m.doc() = "The op library's CUDA kernels on the GPU (tools/gpu_kit)";
  m.attr("backend") = "cuda";
#else
  m.doc() = "The op library's CUDA kernels, run under tests/cuda_emu/cuda_emulation.h";
  m.attr("backend") = "emulated";
#endif
  m.def("plan", &Plan, py::arg("rows"), py::arg("row_length"), py::arg("partial_bytes"), py::arg("multiprocessors"),
        py::arg("piece_length") = 0, py::arg("max_grid") = 0);
  m.def("bpmll", &Bpmll, py::arg("y_true"), py::arg("label_dtype"), py::arg("y_pred"), py::arg("dtype"),
        py::arg("loss"), py::arg("grad"), py::arg("multiprocessors") = 1, py::arg("piece_length") = 0,
        py::arg("max_grid") = 0);
  m.def("scale_rows", &ScaleRows, py::arg("scale"), py::arg("x"), py::arg("out"), py::arg("dtype"),
        py::arg("multiprocessors") = 1, py::arg("piece_length") = 0, py::arg("max_grid") = 0);
  m.def("correlation_forward", &CorrelationForward, py::arg("y_true"), py::arg("y_pred"), py::arg("mask"),
        py::arg("dtype"), py::arg("epsilon"), py::arg("concordance"), py::arg("loss"), py::arg("row_stats"),
        py::arg("multiprocessors") = 1, py::arg("piece_length") = 0, py::arg("max_grid") = 0);
  m.def("correlation_backward", &CorrelationBackward, py::arg("grad_loss"), py::arg("y_true"), py::arg("y_pred"),
        py::arg("mask"), py::arg("row_stats"), py::arg("dtype"), py::arg("epsilon"), py::arg("concordance"),
        py::arg("grad_y_true"), py::arg("grad_y_pred"), py::arg("multiprocessors") = 1, py::arg("piece_length") = 0,
        py::arg("max_grid") = 0);
#if defined(TFL_EMU_DEVICE_MEMORY)
  m.def("device_info", &DeviceInfo);
  m.def("bench_bpmll", &BenchBpmll, py::arg("y_true"), py::arg("label_dtype"), py::arg("y_pred"), py::arg("dtype"),
        py::arg("multiprocessors"), py::arg("warmup"), py::arg("runs"));
  m.def("bench_scale_rows", &BenchScaleRows, py::arg("scale"), py::arg("x"), py::arg("dtype"),
        py::arg("multiprocessors"), py::arg("warmup"), py::arg("runs"));
  m.def("bench_correlation", &BenchCorrelation, py::arg("direction"), py::arg("grad_loss"), py::arg("y_true"),
        py::arg("y_pred"), py::arg("mask"), py::arg("dtype"), py::arg("concordance"), py::arg("want_grad_y_true"),
        py::arg("multiprocessors"), py::arg("warmup"), py::arg("runs"));
  m.def("bench_copy", &BenchCopy, py::arg("bytes"), py::arg("warmup"), py::arg("runs"));
#endif
}
