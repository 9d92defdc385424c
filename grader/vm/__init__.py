"""Lab VMs: the QEMU runner and the VM objects the grading engine acquires."""
