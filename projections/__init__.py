"""Projections: deterministic folds of the log into views (message trees, consensus,
leaderboards, history, trust), the runner that keeps them and their stored rows, and the
dataset and snapshot builders. Imports the domain and infra's adapters."""
