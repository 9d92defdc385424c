"""`make faults`: the fault and abuse suite (python -m faults); see docs/development.md, Fault suite."""
