"""``python -m vitlens.cli ARGS`` is the ``vitlens`` command; it is also the torchrun entry point:
``torchrun --nproc_per_node=N -m vitlens.cli export INPUT OUTPUT.h5 ...``."""
from .main import main

main()
