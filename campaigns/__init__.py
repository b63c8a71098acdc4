"""Outbound campaigns: prospects, pacing, retries, DID selection and DID health."""
