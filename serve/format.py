"""The name of the exported model's format, in its ONNX metadata: export/onnx.py writes it, the samplers check it
(serve/js/core.js holds the same string; tests/test_sampler.py checks the two agree)."""

FORMAT = "charlstm-cell/1"
