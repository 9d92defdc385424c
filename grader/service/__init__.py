"""The grader service: cohorts, submissions, a durable job queue over a pool of lab VMs, results.

Built on the engine (grader/engine): a job is one engine grading run of one stored submission.
"""
