"""Optimized images (activation maximization), in lucid's optvis spirit: parameterizations,
objectives and transforms as small composable pieces, and one batched step loop."""
