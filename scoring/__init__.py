"""Online River models, vectorized champion scoring, thresholds, decisions and reasons."""
