// The Python extension module lsskernels._C. Importing it runs the static
// registrations (TORCH_LIBRARY in ops.cpp, TORCH_LIBRARY_IMPL per backend);
// the functions below describe the build, and one is a direct door to an op.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/python.h>
#include <pybind11/pybind11.h>

#include "cpu/int8_dots.h"
#include "cpu/row_topk.h"
#include "cpu/vector_math.h"
#include "lss/partition_predict_topk.h"
#include "lss/common.h"

namespace {
bool built_with_cuda() {
#ifdef LSS_WITH_CUDA
  return true;
#else
  return false;
#endif
}

// The limits the kernels enforce, for the Python checks (lsskernels/_checks.py
// reads them once at import): one definition, here in lss/common.h.
pybind11::dict limits() {
  pybind11::dict d;
  d["max_bits"] = lss::kMaxBits;
  d["max_tables"] = lss::kMaxTables - 1;
  d["code_align"] = lss::kCodeAlign;
  d["quant_levels"] = lss::kQuantLevels;
  return d;
}

// An op called unboxed, through the dispatcher entry torch.ops.lsskernels.<op>
// uses, with the C++ signature Sig: torch.ops' boxed call converts every
// argument against the schema, which eager predict() at batch 1 pays per
// query (docs/performance.md, 0.8).
template <const char* kName, typename Sig>
struct Unboxed;
template <const char* kName, typename R, typename... Args>
struct Unboxed<kName, R(Args...)> {
  static R call(Args... args) {
    static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow(kName, "").typed<R(Args...)>();
    return op.call(args...);
  }
};
constexpr char kPartitionPredictTopk[] = "lsskernels::partition_predict_topk";
}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "lsskernels C++/CUDA ops (registered under torch.ops.lsskernels)";
  m.def("built_with_cuda", &built_with_cuda, "True when the CUDA kernels were compiled in");
  m.def("limits", &limits, "The argument limits the kernels enforce (max_bits, max_tables, code_align, quant_levels)");
  m.def("cpu_vector_isa", &lss::cpu::vector_isa,
        "Instruction set the CPU row kernels dispatched to on this machine");
  m.def("cpu_vector_kernels", [] {
    pybind11::dict d;
    for (const auto& [kernel, isa] : lss::cpu::vector_kernel_isas()) d[pybind11::str(kernel)] = isa;
    return d;
  }, "Per CPU row kernel (dot_f32, axpy_bf16, ..., next_topk_candidate), the instruction set of the table row it came from");
  m.def("cpu_has_bf16_dot", &lss::cpu::cpu_has_bf16_dot,
        "True where the CPU has AVX-512 BF16 (and LSS_CPU_ISA leaves AVX-512 on): fit's k-means screens in bf16");
  m.def("bf16_row_topk", &lss::cpu::bf16_row_topk,
        "Column ids int64 [n, k] of each row's k largest entries of a bf16 [n, P] CPU block, larger first, ties "
        "to the smaller column (fit's bf16 screen, lsskernels/row_argmax.py; not a torch op)",
        pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("cpu_int8_isa", &lss::cpu::int8_isa,
        "Kernel the CPU int8 code-row scoring (quantized_candidates) dispatched to on this machine");
  // The GIL is released while the op runs, as torch.ops' call does: other
  // Python threads (a server's) keep running during a predict.
  m.def("partition_predict_topk", &Unboxed<kPartitionPredictTopk, lss::PartitionPredictTopk>::call,
        "torch.ops.lsskernels.partition_predict_topk, called unboxed (the same dispatcher entry)",
        pybind11::call_guard<pybind11::gil_scoped_release>());
}
