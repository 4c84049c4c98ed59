"""Notes API."""
