"""The command side's shell around the domain: HTTP routes at OA's paths (routes.py), the
command service (service.py: idempotency, group commit, the tree manager's reactions,
checkpoints, recovery), API keys and rate limits. Imports the domain and the adapters in
infra/, never the read side."""
