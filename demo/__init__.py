"""The demo: broker, worker, simulator, reviewers, review page and metrics in one command."""
