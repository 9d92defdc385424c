"""copylab grading engine (stdlib only, python >= 3.11; also runs inside the lab VM).

Modules: labspec (lab.toml), profile (kernel profiles), evidence (parsers), model (the per-run
object), checks (registry of check kinds), result (result JSON, Gradescope, text), run (phases).
"""
