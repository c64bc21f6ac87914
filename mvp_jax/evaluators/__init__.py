"""Evaluators share one interface: `evaluator.run(params) -> {metric name: float}`."""
