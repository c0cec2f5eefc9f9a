"""The browser sampler: a static page (index.html, app.js) that runs a charlstm .onnx on onnxruntime-web, and
`python -m serve.web MODEL.onnx`, which serves it on 127.0.0.1."""
