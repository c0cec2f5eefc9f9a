"""How the processes of a run work together: the process group and its collectives (group.py), a peer that
hangs or vanishes (peer_faults.py), the device and precision with the Accelerator that applies them
(precision.py), and the one place a step lets the host wait for the device (host_sync.py)."""
