"""Node agent: pulls requests for its pools, runs them on warm runner processes, reports results."""
