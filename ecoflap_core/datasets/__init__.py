"""Data sets that both the model zoo (calibration, training) and the evaluation tasks read."""
