"""Detection evaluation: the backtest over a recorded stream with delayed labels, the
offline detection metrics of the published benchmark, and the backtest report."""
