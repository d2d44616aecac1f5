"""Models, export, backends (ONNX Runtime, TensorRT), quantisation and engine builds."""
