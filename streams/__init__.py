"""Kafka side of flagstream: settings, topics, wire schemas, the Faust app and its agents."""
