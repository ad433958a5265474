"""What tools, tests and benchmarks use to make data and models: the user simulator behind
``oasst seed`` (simulator.py), tiny language models built locally (tiny_lm.py) and a
Kafka-protocol broker launcher (brokers.py). Nothing in the service's path imports it."""
