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

}  // namespace

PYBIND11_MODULE(tfl_cuda_emu, m) {
  m.doc() = "The op library's CUDA kernels, run under tests/cuda_emu/cuda_emulation.h";
  m.def("bpmll", &Bpmll, py::arg("y_true"), py::arg("label_dtype"), py::arg("y_pred"), py::arg("dtype"),
        py::arg("loss"), py::arg("grad"), py::arg("multiprocessors") = 1, py::arg("piece_length") = 0,
        py::arg("max_grid") = 0);
}
