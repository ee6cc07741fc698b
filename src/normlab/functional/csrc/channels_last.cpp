// Channels-last (NHWC) normalization on CPU, compiled on first use by normlab.functional._kernels: the Python
// module's entry points, and the autograd Function of InstanceNorm and training-mode BatchNorm.
//
// The memory of a channels_last (N, C, *spatial) tensor is (N, L, C), L the spatial positions, normalized per
// (group, channel): N groups of L values (InstanceNorm: columns.cpp, one task per (n, vector of channels)) or one
// group of N * L (BatchNorm, and InstanceNorm of one example: batch_norm.cpp, blocks of rows, so that every thread
// has work whatever C). GroupNorm (columns.cpp) combines the (n, c) columns' statistics per group of channels; its
// autograd Function is Python's (normlab.functional.channels_last).
//
// The Function is C++ so that a call costs what one of ATen's does: the forward is one call from Python, and the
// backward runs without Python (on the benchmark's small BatchNorm, a Python Function's two calls cost about a
// tenth of the step). Its backward differentiates ATen's composite instead of calling the kernel where the kernel
// cannot serve: under create_graph (a second derivative) and when the upstream gradient is not a plain tensor
// (vmap's batched tensors: gradcheck's batched-gradient check runs the backward under vmap).

#include <torch/extension.h>

#include "channels_last.h"

namespace normlab {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Per-(group, channel) normalization: (y, saved statistics, rstd, var); groups N (InstanceNorm) or 1 (BatchNorm)
std::vector<at::Tensor> forward(const at::Tensor& x, int64_t groups, const std::optional<at::Tensor>& weight,
                                const std::optional<at::Tensor>& bias, double eps,
                                const std::optional<at::Tensor>& running_mean,
                                const std::optional<at::Tensor>& running_var, double momentum) {
  if (groups == 1) return batch_norm_forward(x, weight, bias, eps, running_mean, running_var, momentum);
  return column_forward(x, groups, weight, bias, eps, running_mean, running_var, momentum);
}

// Its backward given the forward's saved statistics: (dx, dw, db), each undefined where not wanted
std::vector<at::Tensor> backward(const at::Tensor& dy, const at::Tensor& x, int64_t groups, const at::Tensor& saved,
                                 const at::Tensor& rstd, const std::optional<at::Tensor>& weight, bool need_input,
                                 bool need_affine) {
  if (groups == 1) return batch_norm_backward(dy, x, saved, rstd, weight, need_input, need_affine);
  return column_backward(dy, x, groups, saved, rstd, weight, need_input, need_affine);
}

// Whether the kernel can read t: dense storage, not a functorch wrapper (vmap, grad) nor a Python subclass
bool is_plain(const at::Tensor& t) {
  static const c10::DispatchKeySet wrapped({c10::DispatchKey::FuncTorchBatched, c10::DispatchKey::FuncTorchGradWrapper,
                                            c10::DispatchKey::Batched, c10::DispatchKey::Python,
                                            c10::DispatchKey::Functionalize});
  return t.defined() && t.has_storage() && !t.key_set().has_any(wrapped);
}

}  // namespace

// (outside the anonymous namespace: autograd names its node after it, torch::autograd::CppNode<normlab::...>)
// InstanceNorm (groups = N) and training-mode BatchNorm (groups = 1) with the input's statistics. Inputs: x, weight,
// bias, eps, groups, running_mean, running_var, momentum; the running buffers are updated in the forward.
struct ChannelsLastNorm : public torch::autograd::Function<ChannelsLastNorm> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const std::optional<at::Tensor>& weight,
                            const std::optional<at::Tensor>& bias, double eps, int64_t groups,
                            const std::optional<at::Tensor>& running_mean,
                            const std::optional<at::Tensor>& running_var, double momentum) {
    auto out = normlab::forward(x, groups, weight, bias, eps, running_mean, running_var, momentum);
    const at::Tensor w = weight.has_value() ? *weight : at::Tensor(), b = bias.has_value() ? *bias : at::Tensor();
    ctx->save_for_backward({x, w, b, out[1], out[2]});
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["groups"] = groups;
    return out[0];
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &w = saved[1], &b = saved[2], &dy = grad_outputs[0];
    const double eps = ctx->saved_data["eps"].toDouble();
    const int64_t groups = ctx->saved_data["groups"].toInt();
    // needs_input_grad counts the tensor inputs that were given: x, then weight and bias if defined
    const bool need_x = ctx->needs_input_grad(0), need_w = w.defined() && ctx->needs_input_grad(1),
               need_b = b.defined() && ctx->needs_input_grad(w.defined() ? 2 : 1);
    variable_list grads(8);  // one per forward input
    if (at::GradMode::is_enabled() || !is_plain(dy)) {  // ATen's composite, differentiable
      const bool create_graph = at::GradMode::is_enabled();
      at::AutoGradMode enable(true);
      const at::Tensor y = groups == 1 ? at::batch_norm(x, w, b, {}, {}, true, 0.0, eps, false)
                                       : at::instance_norm(x, w, b, {}, {}, true, 0.0, eps, false);
      variable_list wanted;
      for (const auto& [need, t] : {std::pair{need_x, x}, std::pair{need_w, w}, std::pair{need_b, b}}) {
        if (need) wanted.push_back(t);
      }
      const variable_list got = torch::autograd::grad({y}, wanted, {dy}, std::nullopt, create_graph, true);
      size_t i = 0;
      for (const auto& [need, slot] : {std::pair{need_x, 0}, std::pair{need_w, 1}, std::pair{need_b, 2}}) {
        if (need) grads[slot] = got[i++];
      }
      return grads;
    }
    const std::optional<at::Tensor> weight = w.defined() ? std::optional<at::Tensor>(w) : std::nullopt;
    auto g = normlab::backward(dy, x, groups, saved[3], saved[4], weight, need_x, need_w || need_b);
    if (need_x) grads[0] = g[0];
    if (need_w) grads[1] = g[1].to(w.scalar_type());  // the float32 sums of fp16/bf16 parameters, in their dtype
    if (need_b) grads[2] = g[2].to(b.scalar_type());
    return grads;
  }
};

namespace {

at::Tensor norm(const at::Tensor& x, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                double eps, int64_t groups, const std::optional<at::Tensor>& running_mean,
                const std::optional<at::Tensor>& running_var, double momentum) {
  return ChannelsLastNorm::apply(x, weight, bias, eps, groups, running_mean, running_var, momentum);
}

}  // namespace
}  // namespace normlab

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("norm", &normlab::norm,
        "InstanceNorm (groups = N) or training-mode BatchNorm (groups = 1) of channels_last input, differentiable",
        py::arg("input"), py::arg("weight"), py::arg("bias"), py::arg("eps"), py::arg("groups"),
        py::arg("running_mean"), py::arg("running_var"), py::arg("momentum"));
  m.def("forward", &normlab::forward,
        "per-(group, channel) normalization of channels_last input: (y, saved statistics, rstd, var)",
        py::arg("input"), py::arg("groups"), py::arg("weight"), py::arg("bias"), py::arg("eps"),
        py::arg("running_mean"), py::arg("running_var"), py::arg("momentum"));
  m.def("backward", &normlab::backward, "its backward: (grad_input, grad_weight, grad_bias), each or None",
        py::arg("grad_output"), py::arg("input"), py::arg("groups"), py::arg("shifted_mean"), py::arg("rstd"),
        py::arg("weight"), py::arg("need_input"), py::arg("need_affine"));
  m.def("group_forward", &normlab::group_forward,
        "GroupNorm of channels_last input: (y, mean - column's first value, rstd)", py::arg("input"),
        py::arg("num_groups"), py::arg("weight"), py::arg("bias"), py::arg("eps"));
  m.def("group_backward", &normlab::group_backward, "its backward: (grad_input, grad_weight, grad_bias), each or None",
        py::arg("grad_output"), py::arg("input"), py::arg("num_groups"), py::arg("mean"), py::arg("rstd"),
        py::arg("weight"), py::arg("need_input"), py::arg("need_affine"));
}
