"""``python -m diffusion.tools.throughput``."""

from diffusion.tools.throughput import main

main()
