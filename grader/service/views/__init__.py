"""Blueprints, one per audience: auth (log in/out), student, instructor, api (bearer tokens)."""
