"""Helpers of the benchmark suite (``python -m benchmarks.run``): peaks and roofline math, the bundled and the
real models with their data, the plain-library baselines, measurement, headline selection and rendering."""
