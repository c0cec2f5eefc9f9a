"""The launcher side: `python -m trainer.launch` (what ./launch.sh runs) chooses a launcher for this machine and
its scheduler (plan.py), starts it and passes the user's stop on (supervise.py), and restarts workers that died;
exit_status.py runs torchrun's or accelerate's launch in-process so that its outcome is one line and an exit
status the launcher can act on. Nothing here imports torch: the training processes do (trainer/train.py)."""
