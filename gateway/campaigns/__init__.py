"""Campaigns over HTTP: routes (http.py) → service.py → the campaigns package and pipeline."""
