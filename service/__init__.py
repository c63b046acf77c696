"""facecheck runtime: decoding, face cropping, preprocessing, ONNX inference and the HTTP service.

Training imports the face and preprocessing code from here, so what a model learns from is
exactly what the service feeds it.
"""
