// Schemas of every op and its backward, as one macro so the operator library
// (registration.cpp) and the emulated-CUDA test library (tests/emu) define the same ops.
#pragma once

#define HE_CE_ARGS "int ignore_index, Tensor? class_weight, float label_smoothing, str reduction, int class_tile"
#define HE_HEAD "Tensor features, Tensor weight, Tensor? bias"

#define HE_DEFINE_SCHEMAS(m) \
  m.def("domain_losses(" HE_HEAD ", Tensor labels, Tensor offsets, " HE_CE_ARGS ") -> Tensor"); \
  m.def("_domain_losses_backward(Tensor grad, " HE_HEAD ", Tensor labels, Tensor offsets, " HE_CE_ARGS \
        ") -> (Tensor, Tensor, Tensor)"); \
  m.def("head_grad(" HE_HEAD ", Tensor labels, Tensor offsets, " HE_CE_ARGS ") -> Tensor"); \
  m.def("_head_grad_backward(Tensor grad, " HE_HEAD ", Tensor labels, Tensor offsets, " HE_CE_ARGS \
        ") -> (Tensor, Tensor, Tensor)"); \
  m.def("head_hvp(" HE_HEAD ", Tensor vectors, Tensor offsets, Tensor? labels, " HE_CE_ARGS ") -> Tensor"); \
  m.def("_head_hvp_backward(Tensor grad, " HE_HEAD ", Tensor vectors, Tensor offsets, Tensor? labels, " HE_CE_ARGS \
        ") -> (Tensor, Tensor, Tensor, Tensor)"); \
  m.def("head_hessian_diag(" HE_HEAD ", Tensor offsets, Tensor? labels, " HE_CE_ARGS ") -> Tensor"); \
  m.def("_head_hessian_diag_backward(Tensor grad, " HE_HEAD ", Tensor offsets, Tensor? labels, " HE_CE_ARGS \
        ") -> (Tensor, Tensor, Tensor)"); \
  m.def("head_hessian_trace(" HE_HEAD ", Tensor offsets, Tensor? labels, " HE_CE_ARGS ") -> Tensor"); \
  m.def("_head_hessian_trace_backward(Tensor grad, " HE_HEAD ", Tensor offsets, Tensor? labels, " HE_CE_ARGS \
        ") -> (Tensor, Tensor, Tensor)"); \
  m.def("head_hessian_inner(" HE_HEAD ", Tensor offsets, Tensor? labels, " HE_CE_ARGS ") -> Tensor"); \
  m.def("_head_hessian_inner_backward(Tensor grad, " HE_HEAD ", Tensor offsets, Tensor? labels, " HE_CE_ARGS \
        ") -> (Tensor, Tensor, Tensor)"); \
  m.def("hutchinson_diag(" HE_HEAD ", Tensor offsets, int num_probes, int seed, Tensor? labels, " HE_CE_ARGS \
        ") -> Tensor"); \
  m.def("_hutchinson_diag_backward(Tensor grad, " HE_HEAD ", Tensor offsets, int num_probes, int seed, " \
        "Tensor? labels, " HE_CE_ARGS ") -> (Tensor, Tensor, Tensor)"); \
  m.def("hutchinson_trace(" HE_HEAD ", Tensor offsets, int num_probes, int seed, Tensor? labels, " HE_CE_ARGS \
        ") -> Tensor"); \
  m.def("_hutchinson_trace_backward(Tensor grad, " HE_HEAD ", Tensor offsets, int num_probes, int seed, " \
        "Tensor? labels, " HE_CE_ARGS ") -> (Tensor, Tensor, Tensor)"); \
  m.def("loss_rows(Tensor labels, Tensor offsets, int num_classes, int ignore_index, Tensor? class_weight, " \
        "float label_smoothing, str reduction, ScalarType dtype) -> (Tensor, Tensor)"); \
  m.def("logits_hvp(Tensor probs, Tensor coef, Tensor vectors) -> (Tensor, Tensor)"); \
  m.def("_logits_hvp_backward(Tensor? grad_s, Tensor? grad_m, Tensor probs, Tensor coef, Tensor vectors, " \
        "Tensor means) -> (Tensor, Tensor, Tensor)"); \
  m.def("hgp_fused(" HE_HEAD ", Tensor labels, int[] offsets, float alpha, float beta, bool mean_loss, " \
        "int ignore_index, Tensor? class_weight, float label_smoothing, str reduction) -> (Tensor, Tensor, Tensor, " \
        "Tensor[])"); \
  m.def("_hgp_fused_backward(Tensor grad, " HE_HEAD ", int[] offsets, float alpha, float beta, Tensor[] saved, " \
        "bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
