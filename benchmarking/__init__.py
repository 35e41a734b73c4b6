"""Throughput, MFU, compile time, memory and decode speed of the Transformer on any device.

`benchmark.py` is the command; this package holds its pieces, one idea per module:
flops (the analytic FLOPs count), peak (what the hardware can do), synthetic (packed batches),
report (markdown and JSON).
"""
