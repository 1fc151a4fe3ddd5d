"""Edge fleets: a device registry, per-hardware variants, the rollout controller devices pull from, the device
agent, the artifact server, and a simulator that drives the same code with thousands of simulated devices."""
