"""What the tools (bench, faults) and the tests share, none of it shipped with the product: instance
folders and the service as local processes (service.py), an HTTP client with CSRF and multipart
(http.py), the in-process app as the tests drive it (app.py), recorded engine runs (engine_runs.py), the
report helpers of bench and faults (report.py), and the lab 1/2 submission variants that the VM tests and
the fault suite grade (lab1_submissions.py, lab2_submissions.py). It imports grader, never tests, bench
or faults."""
