"""The HTTP service: OpenAI's completions API over one batched step loop (python -m serve.http MODEL.onnx).
Needs the `server` extra (Starlette, uvicorn, prometheus-client); never torch."""
