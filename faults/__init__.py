"""`make faults`: the fault and abuse suite (python -m faults); see README section Fault suite."""
