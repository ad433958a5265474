"""Adapters and wiring: settings, the event store, write-model checkpoints, Kafka (wire
format, clients, the relay process), the OA file format, metrics, and the places that build
the application from settings (app.py for HTTP, cli*.py for the command line)."""
