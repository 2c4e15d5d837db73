"""The model: tokenizer, settings and presets (torch-free), the BarcodeMAE network (mae), weights on disk and their
registry, the exported ONNX encoder, and device/arithmetic selection.

Importing this package imports no PyTorch: `barcodetool.model.mae` and the load/save functions of
`barcodetool.model.weights` do, when used.
"""
