"""HOS Workbench core library: models, data, statistics and measurements.

Pure library (torch, tensorly, scipy); it never imports textual or rich.
"""
