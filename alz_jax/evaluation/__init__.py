"""Evaluation: metrics, calibration and thresholds, reports, figures and Grad-CAM. Imports the
core below it; never run or commands."""
