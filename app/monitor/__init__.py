"""Production monitoring: which responses are flagged, the response log, drift, feedback."""
