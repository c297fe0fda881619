"""Online retraining: from the server's telemetry to a better, still-plastic policy in service."""
