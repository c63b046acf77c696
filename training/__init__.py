"""facecheck training: datasets, the face-crop cache, the model zoo, training, evaluation and export.

Depends on the runtime package `service` for face cropping and normalisation; never the reverse.
"""
