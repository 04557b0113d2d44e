// pybind11 module for tests/test_cuda_emulation.py: runs the CUDA kernels
// under the emulation on numpy arrays. 16-bit floats travel as their bit
// patterns (numpy uint16/float16 arrays) with the dtype named separately.
#include <pybind11/pybind11.h>

#include <string>

#include "emu_ops.h"

namespace py = pybind11;

namespace {

struct Array {
  void* data;
  std::vector<py::ssize_t> shape;
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
  return Array{info.ptr, info.shape};
}

tf_fused_losses::gpu::RowLaunchOptions Options(int multiprocessors, int64_t piece_length, int64_t max_grid) {
  tf_fused_losses::gpu::RowLaunchOptions options;
  options.multiprocessors = multiprocessors;
  options.piece_length = piece_length;
  options.max_grid = max_grid > 0 ? max_grid : tf_fused_losses::gpu::kMaxGrid;
  return options;
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
  const auto plan = tf_fused_losses::gpu::PlanRows(rows, row_length, partial_bytes,
                                                   Options(multiprocessors, piece_length, max_grid));
  py::dict d = Info(tfl_emu::LaunchInfo{tf_fused_losses::gpu::RowShapeName(plan.shape), plan.grid,
                                        plan.pieces_per_row, plan.piece_length});
  d["scratch_bytes"] = plan.scratch_bytes;
  return d;
}

py::dict Bpmll(const py::buffer& y_true, const std::string& label_dtype, const py::buffer& y_pred,
               const std::string& dtype, const py::buffer& loss, const py::buffer& grad, int multiprocessors,
               int64_t piece_length, int64_t max_grid) {
  const tfl_emu::Type type = tfl_emu::ParseType(dtype), label_type = tfl_emu::ParseType(label_dtype);
  Array pred = Check(y_pred, "y_pred", type, false);
  Array labels = Check(y_true, "y_true", label_type, false);
  Array loss_out = Check(loss, "loss", type, true);
  Array grad_out = Check(grad, "grad", type, true);
  if (pred.shape.size() != 2 || labels.shape != pred.shape || grad_out.shape != pred.shape ||
      loss_out.shape != std::vector<py::ssize_t>{pred.shape[0]}) {
    throw std::invalid_argument("bpmll: shapes must be y_true = y_pred = grad = (rows, labels), loss = (rows,)");
  }
  tfl_emu::LaunchInfo info;
  {
    py::gil_scoped_release release;
    info = tfl_emu::Bpmll(type, label_type, labels.data, pred.data, loss_out.data, grad_out.data, pred.shape[0],
                          pred.shape[1], Options(multiprocessors, piece_length, max_grid));
  }
  return Info(info);
}

py::dict ScaleRows(const py::buffer& scale, const py::buffer& in, const py::buffer& out, const std::string& dtype,
                   int multiprocessors, int64_t piece_length, int64_t max_grid) {
  const tfl_emu::Type type = tfl_emu::ParseType(dtype);
  Array s = Check(scale, "scale", type, false);
  Array x = Check(in, "in", type, false);
  Array o = Check(out, "out", type, true);
  if (x.shape.size() != 2 || o.shape != x.shape || s.shape != std::vector<py::ssize_t>{x.shape[0]}) {
    throw std::invalid_argument("scale_rows: shapes must be in = out = (rows, labels), scale = (rows,)");
  }
  tfl_emu::LaunchInfo info;
  {
    py::gil_scoped_release release;
    info = tfl_emu::ScaleRows(type, s.data, x.data, o.data, x.shape[0], x.shape[1],
                              Options(multiprocessors, piece_length, max_grid));
  }
  return Info(info);
}

const bool* MaskOf(const py::object& mask, const std::vector<py::ssize_t>& shape) {
  if (mask.is_none()) return nullptr;
  Array m = Check(mask.cast<py::buffer>(), "mask", tfl_emu::Type::kBool, false);
  if (m.shape != shape) throw std::invalid_argument("mask must have the shape of y_pred");
  return static_cast<const bool*>(m.data);
}

py::dict CorrelationForward(const py::buffer& y_true, const py::buffer& y_pred, const py::object& mask,
                            const std::string& dtype, double epsilon, bool concordance, const py::buffer& loss,
                            const py::buffer& row_stats, int multiprocessors, int64_t piece_length, int64_t max_grid) {
  const tfl_emu::Type type = tfl_emu::ParseType(dtype);
  Array y = Check(y_true, "y_true", type, false);
  Array x = Check(y_pred, "y_pred", type, false);
  Array l = Check(loss, "loss", type, true);
  Array stats = Check(row_stats, "row_stats", tfl_emu::Type::kDouble, true);
  if (x.shape.size() != 2 || y.shape != x.shape || l.shape != x.shape ||
      stats.shape != std::vector<py::ssize_t>{x.shape[0], tf_fused_losses::kCorrelationRowStats}) {
    throw std::invalid_argument("correlation_forward: shapes must be y_true = y_pred = loss = (rows, steps), "
                                "row_stats = (rows, 5)");
  }
  const bool* m = MaskOf(mask, x.shape);
  tfl_emu::LaunchInfo info;
  {
    py::gil_scoped_release release;
    info = tfl_emu::CorrelationForward(type, y.data, x.data, m, static_cast<float>(epsilon), concordance, l.data,
                                       static_cast<double*>(stats.data), x.shape[0], x.shape[1],
                                       Options(multiprocessors, piece_length, max_grid));
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
  if (x.shape.size() != 2 || y.shape != x.shape || g.shape != x.shape || (want_y && gy.shape != x.shape) ||
      gx.shape != x.shape ||
      stats.shape != std::vector<py::ssize_t>{x.shape[0], tf_fused_losses::kCorrelationRowStats}) {
    throw std::invalid_argument("correlation_backward: shapes must be (rows, steps), row_stats (rows, 5)");
  }
  const bool* m = MaskOf(mask, x.shape);
  tfl_emu::LaunchInfo info;
  {
    py::gil_scoped_release release;
    info = tfl_emu::CorrelationBackward(type, g.data, y.data, x.data, m, static_cast<const double*>(stats.data),
                                        static_cast<float>(epsilon), concordance, want_y ? gy.data : nullptr, gx.data,
                                        x.shape[0],
                                        x.shape[1], Options(multiprocessors, piece_length, max_grid));
  }
  return Info(info);
}

}  // namespace

PYBIND11_MODULE(tfl_cuda_emu, m) {
  m.doc() = "The op library's CUDA kernels, run under tests/cuda_emu/cuda_emulation.h";
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
}
