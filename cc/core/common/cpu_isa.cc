// Which per-ISA build runs, for the frontends to report and check
// (tf_fused_losses.build_info()["cpu_isa"]; tfl_cpu_isa_error, which every
// frontend checks before a CPU kernel runs).
#include "cpu_isa.h"

#include <cstdlib>
#include <cstring>

namespace tf_fused_losses {
namespace {

constexpr CpuIsa kCpuIsas[] = {CpuIsa::kBaseline, CpuIsa::kAvx2, CpuIsa::kAvx512};  // lowest first

// "baseline, avx2" for every build up to `last`.
std::string CpuIsaList(CpuIsa last) {
  std::string out;
  for (CpuIsa isa : kCpuIsas) {
    if (static_cast<int>(isa) > static_cast<int>(last)) break;
    out += (out.empty() ? "" : ", ") + std::string(CpuIsaName(isa));
  }
  return out;
}

// How Python's repr() writes a plain string, so that the message reads as the
// Python loader's always has: single quotes, unless the value holds one and
// no double quote.
std::string Quoted(const std::string& value) {
  const char quote = value.find('\'') != std::string::npos && value.find('"') == std::string::npos ? '"' : '\'';
  std::string out(1, quote);
  for (char c : value) {
    if (c == '\\' || c == quote) out += '\\';
    out += c;
  }
  return out + quote;
}

}  // namespace

CpuIsaChoice ChooseCpuIsa(CpuIsa supported, const char* setting) {
  if (setting == nullptr || *setting == '\0') return {supported, ""};
  for (CpuIsa isa : kCpuIsas) {
    if (std::strcmp(setting, CpuIsaName(isa)) != 0) continue;
    if (static_cast<int>(isa) <= static_cast<int>(supported)) return {isa, ""};
    return {supported, std::string("TFL_CPU_ISA=") + setting +
                           " asks for a build this CPU cannot run: it supports up to " + CpuIsaName(supported) +
                           ". Allowed values here: " + CpuIsaList(supported) + "."};
  }
  return {CpuIsa::kBaseline, "TFL_CPU_ISA=" + Quoted(setting) +
                                 " is not an ISA build of tf_fused_losses; allowed values: " +
                                 CpuIsaList(CpuIsa::kAvx512) + " (or unset it to use the best this CPU runs)."};
}

const CpuIsaChoice& ProcessCpuIsa() {
  static const CpuIsaChoice choice = ChooseCpuIsa(SupportedCpuIsa(), std::getenv("TFL_CPU_ISA"));
  return choice;
}

}  // namespace tf_fused_losses

extern "C" {

// The ISA build the kernels use: the best this CPU runs, capped by TFL_CPU_ISA.
__attribute__((visibility("default"))) const char* tfl_cpu_isa_in_use() {
  return tf_fused_losses::CpuIsaName(tf_fused_losses::BestCpuIsa());
}

// The best ISA build this CPU runs, whatever TFL_CPU_ISA says.
__attribute__((visibility("default"))) const char* tfl_cpu_isa_supported() {
  return tf_fused_losses::CpuIsaName(tf_fused_losses::SupportedCpuIsa());
}

__attribute__((visibility("default"))) const char* tfl_cpu_isa_error(void) {
  const std::string& error = tf_fused_losses::ProcessCpuIsa().error;
  return error.empty() ? nullptr : error.c_str();
}

}  // extern "C"
