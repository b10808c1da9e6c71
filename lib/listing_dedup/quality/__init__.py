"""Quality: the row-wise F1 metric, evaluation of a committed run, the HTML report, threshold
tuning and the generated sample catalog."""
