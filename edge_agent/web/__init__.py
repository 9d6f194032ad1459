"""The live page served at ``/``."""
