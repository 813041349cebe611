"""The OpenAI-compatible routes (/v1): errors, stop strings and tokens, request schemas, routes."""
