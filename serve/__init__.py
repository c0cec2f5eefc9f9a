"""Sampling and scoring on onnxruntime from an exported charlstm .onnx; needs no torch."""

from serve.sampler import Sampler, SamplerError, SamplingOptions

__all__ = ["Sampler", "SamplerError", "SamplingOptions"]
