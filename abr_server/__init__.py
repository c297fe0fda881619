"""abr_server: a FastAPI service that answers players' bitrate requests and records their reports."""
