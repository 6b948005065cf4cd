"""The simulated world: the benchmark's transaction generator and fraud scenarios, replay of
recorded streams onto Kafka, and simulated reviewers and chargebacks answering on feedback."""
