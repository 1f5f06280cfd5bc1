"""Quantization analysis: which layers break under INT8, and the model that meets a target mAP."""
