"""resin-abr command line."""
